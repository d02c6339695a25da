"""pycaffe's ``caffe.Classifier``: a TEST-phase Net that classifies H×W×K images (from
:func:`caffelite.io.load_image`), center-cropped or averaged over ten crops."""

from __future__ import annotations

import numpy as np

from .io import pycaffe as pyio
from .layer import TEST
from .net import Net

__all__ = ["Classifier"]



def input_transformer(name, shape, mean=None, input_scale=None, raw_scale=None, channel_swap=None):
    """A :class:`caffelite.io.Transformer` for input ``name`` of ``shape``: H x W x C images to C x H x W, with
    pycaffe's optional mean, input scale, raw scale and channel swap (Classifier's and Detector's set-up)."""
    t = pyio.Transformer({name: shape})
    t.set_transpose(name, (2, 0, 1))
    if mean is not None:
        t.set_mean(name, mean)
    if input_scale is not None:
        t.set_input_scale(name, input_scale)
    if raw_scale is not None:
        t.set_raw_scale(name, raw_scale)
    if channel_swap is not None:
        t.set_channel_swap(name, channel_swap)
    return t


class Classifier(Net):
    """``Classifier(model_file, pretrained_file, image_dims=None, mean=None, input_scale=None, raw_scale=None,
    channel_swap=None)``: images are resized to ``image_dims`` (default: the input's H×W) and cropped to the
    input's H×W; ``mean``/``input_scale``/``raw_scale``/``channel_swap`` configure :attr:`transformer`.
    """

    def __init__(self, model_file, pretrained_file, image_dims=None, mean=None, input_scale=None,
                 raw_scale=None, channel_swap=None):
        super().__init__(model_file, pretrained_file, TEST)
        if not self.inputs:
            raise self._no_input_error()
        in_ = self.inputs[0]
        shape = self.blobs[in_].shape
        self.transformer = input_transformer(in_, shape, mean, input_scale, raw_scale, channel_swap)
        self.crop_dims = np.array(shape[2:])
        self.image_dims = np.array(image_dims if image_dims is not None else self.crop_dims)

    def _no_input_error(self):
        from .errors import NetError
        return NetError(f"Classifier needs a net with an Input layer (net '{self.name}' has no inputs)")

    def predict(self, inputs, oversample=True):
        """Class scores of each image in ``inputs`` (a list of H×W×K arrays): an (N, classes) array of the
        first output, the mean over ten crops with ``oversample=True``, else of the center crop."""
        if not len(inputs):
            raise ValueError("Classifier.predict: no images given")
        ih, iw = (int(d) for d in self.image_dims)
        chans = np.asarray(inputs[0]).shape[-1]
        resized = np.empty((len(inputs), ih, iw, chans), dtype=np.float32)
        for i, im in enumerate(inputs):
            im = np.asarray(im)
            if im.ndim != 3 or im.shape[-1] != chans:
                raise ValueError(f"Classifier.predict: image {i} has shape {im.shape}; expected H x W x {chans}")
            resized[i] = pyio.resize_image(im, (ih, iw))
        if oversample:
            crops = pyio.oversample(resized, self.crop_dims)
        else:
            ch, cw = (int(d) for d in self.crop_dims)
            y0, x0 = int(ih / 2.0 - ch / 2.0), int(iw / 2.0 - cw / 2.0)
            crops = resized[:, y0:y0 + ch, x0:x0 + cw, :]
        in_ = self.inputs[0]
        batch = np.stack([self.transformer.preprocess(in_, c) for c in crops])
        scores = self.forward_all(**{in_: batch})[self.outputs[0]]
        if oversample:
            scores = scores.reshape((len(scores) // 10, 10, -1)).mean(axis=1)
        return scores
