"""pycaffe's ``caffe.Detector``: a TEST-phase Net that classifies windows of images (R-CNN style), with
optional context padding around each window."""

from __future__ import annotations

import numpy as np

from .io import pycaffe as pyio
from .classifier import input_transformer
from .errors import UnsupportedError
from .layer import TEST
from .net import Net

__all__ = ["Detector"]


class Detector(Net):
    """``Detector(model_file, pretrained_file, mean=None, input_scale=None, raw_scale=None, channel_swap=None,
    context_pad=None)``; see :meth:`detect_windows`."""

    def __init__(self, model_file, pretrained_file, mean=None, input_scale=None, raw_scale=None,
                 channel_swap=None, context_pad=None):
        super().__init__(model_file, pretrained_file, TEST)
        in_ = self.inputs[0]
        self.transformer = input_transformer(in_, self.blobs[in_].shape, mean, input_scale, raw_scale,
                                             channel_swap)
        self.configure_crop(context_pad)

    def detect_windows(self, images_windows):
        """``images_windows``: a list of (image file, windows) with windows rows (ymin, xmin, ymax, xmax).
        Returns one dict per window: ``window``, ``prediction`` (the first output) and ``filename``."""
        in_ = self.inputs[0]
        crops, meta = [], []
        for fname, windows in images_windows:
            image = pyio.load_image(fname).astype(np.float32)
            for w in np.asarray(windows):
                crops.append(self.crop(image, w))
                meta.append((fname, w))
        if not crops:
            return []
        batch = np.stack([self.transformer.preprocess(in_, c) for c in crops])
        preds = self.forward_all(**{in_: batch})[self.outputs[0]]
        preds = preds.reshape(len(preds), -1)
        return [{"window": w, "prediction": preds[i], "filename": f} for i, (f, w) in enumerate(meta)]

    def detect_selective_search(self, image_fnames):
        """Not available: it needs the external ``selective_search_ijcv_with_python`` MATLAB package."""
        raise UnsupportedError("Detector.detect_selective_search needs the MATLAB selective search package; "
                               "compute the windows yourself and call detect_windows")

    def crop(self, im, window):
        """The H×W×K crop of ``im`` for ``window`` (ymin, xmin, ymax, xmax), widened by the context padding
        (the part outside the image filled with the mean) when :meth:`configure_crop` set one."""
        y0, x0, y1, x1 = (int(v) for v in window)
        if not self.context_pad:
            return im[y0:y1, x0:x1]
        size = self.crop_dims[0]
        scale = size / (size - 2.0 * self.context_pad)
        half_h, half_w = (y1 - y0 + 1) / 2.0, (x1 - x0 + 1) / 2.0
        cy, cx = y0 + half_h, x0 + half_w
        box = np.round(np.array([cy - scale * half_h, cx - scale * half_w, cy + scale * half_h,
                                 cx + scale * half_w]))
        full_h, full_w = box[2] - box[0] + 1, box[3] - box[1] + 1
        sh, sw = size / full_h, size / full_w
        pad_y, pad_x = int(round(max(0, -box[0]) * sh)), int(round(max(0, -box[1]) * sw))
        h, w = im.shape[:2]
        box = np.clip(box, 0.0, [h, w, h, w]).astype(int)
        crop_h = min(int(round((box[2] - box[0] + 1) * sh)), size - pad_y)
        crop_w = min(int(round((box[3] - box[1] + 1) * sw)), size - pad_x)
        region = im[box[0]:box[2], box[1]:box[3]]
        out = np.ones((size, size, im.shape[2]), dtype=np.float32) * self.crop_mean
        if crop_h > 0 and crop_w > 0 and region.size:
            out[pad_y:pad_y + crop_h, pad_x:pad_x + crop_w] = pyio.resize_image(region, (crop_h, crop_w))
        return out

    def configure_crop(self, context_pad):
        """Set the context padding (pixels of the input) and the fill value outside the image (the mean,
        brought back to image space)."""
        in_ = self.inputs[0]
        self.crop_dims = np.array(self.blobs[in_].shape[2:])
        self.context_pad = context_pad
        if context_pad:
            tr = self.transformer
            mean = tr.mean.get(in_)
            if mean is None:
                self.crop_mean = np.zeros(self.blobs[in_].shape[1], dtype=np.float32)
            else:
                m = np.broadcast_to(mean, (mean.shape[0],) + tuple(self.crop_dims)).mean(axis=(1, 2))
                raw = tr.raw_scale.get(in_)
                if raw is not None:
                    m = m / raw
                swap = tr.channel_swap.get(in_)
                if swap is not None:
                    m = m[np.argsort(swap)]
                self.crop_mean = m.astype(np.float32)
