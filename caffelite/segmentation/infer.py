"""Segmentation inference and evaluation with a deploy net (caffe-jacinto-models' infer_segmentation.py,
docs/jacinto-spec.md §g.3/§g.4), on images, folders, list files or videos.

Per image: read (BGR), resize to the net input (PIL Lanczos, as jacinto), forward, take ``argMaxOut`` (or the
argmax over channels of the first output), resize the prediction back to the original size (nearest), and
write a class-id PNG and, with ``blend``, a chroma-blend overlay: luma from the input, chroma from the
5-class palette (OpenCV's BGR↔YUV). Videos (``video`` extra, imageio-ffmpeg) give an overlay video.
"""

from __future__ import annotations

import math
import os

import numpy as np

from .. import backend
from ..data.imageops import resize_lanczos_pil, resize_nearest_pil
from ..data.reader import load_image, read_image_list
from ..errors import CaffeliteError
from ..io.files import atomic_path, atomic_write, save_png
from .cityscapes import PALETTE_5
from .metrics import ConfusionAccumulator

__all__ = ["Segmenter", "collect_inputs", "chroma_blend", "colorize", "run_inference", "evaluate_lists",
           "InputError"]

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".tif", ".tiff")
VIDEO_EXTS = (".mp4", ".avi", ".mov", ".mkv", ".webm")


class InputError(CaffeliteError, ValueError):
    """An input that cannot be segmented (unknown kind, wrong size, missing optional dependency)."""


def _imageio(path):
    try:
        import imageio.v2 as iio
    except ImportError:
        raise InputError(f"{path}: video input/output needs the 'video' extra (imageio, imageio-ffmpeg): "
                         "pip install 'caffelite[video]'") from None
    return iio


def collect_inputs(inputs) -> list[tuple[str, str]]:
    """Expand image files, folders (their images and videos, sorted, subfolders included), list files (first
    token per line) and videos into ``(kind, path)`` items, kind ``"image"`` or ``"video"``."""
    items = []
    for inp in inputs:
        inp = str(inp)
        ext = os.path.splitext(inp)[1].lower()
        if os.path.isdir(inp):
            found = sorted(os.path.join(dp, f) for dp, _, fs in os.walk(inp) for f in fs
                           if f.lower().endswith(IMAGE_EXTS + VIDEO_EXTS))
            if not found:
                raise InputError(f"{inp}: folder has no images or videos")
            for p in found:
                if p.lower().endswith(VIDEO_EXTS):
                    _imageio(p)  # a video needs the extra: say so, naming the file
                    items.append(("video", p))
                else:
                    items.append(("image", p))
        elif not os.path.exists(inp):
            raise InputError(f"{inp}: no such file or folder")
        elif ext in VIDEO_EXTS:
            _imageio(inp)
            items.append(("video", inp))
        elif ext in IMAGE_EXTS:
            items.append(("image", inp))
        elif ext in (".txt", ".lst", ".list"):
            items += collect_inputs([p.split()[0] for p, _ in read_image_list(inp, with_labels=False)])
        else:
            raise InputError(f"{inp}: not an image, folder, list file or video")
    return items


def colorize(pred: np.ndarray, palette=PALETTE_5) -> np.ndarray:
    """RGB H×W×3 image of class ids ``pred`` through ``palette`` (256×3, RGB)."""
    return np.asarray(palette, np.uint8)[np.clip(pred, 0, 255).astype(np.uint8)]


def _bgr_to_yuv(bgr):
    b, g, r = (bgr[..., i].astype(np.float32) for i in range(3))
    y = 0.299 * r + 0.587 * g + 0.114 * b
    return y, 0.492 * (b - y) + 128.0, 0.877 * (r - y) + 128.0


def chroma_blend(bgr: np.ndarray, pred: np.ndarray, palette=PALETTE_5) -> np.ndarray:
    """§g.3 blend mode 1: Y from the input image (H×W×3 BGR), U and V from the palette colours; BGR out."""
    color_bgr = colorize(pred, palette)[..., ::-1]
    y, _, _ = _bgr_to_yuv(bgr)
    _, u, v = _bgr_to_yuv(color_bgr)
    u, v = u - 128.0, v - 128.0
    out = np.stack([y + 2.032 * u, y - 0.395 * u - 0.581 * v, y + 1.140 * v], axis=-1)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


class Segmenter:
    """A deploy net that maps a BGR C×H×W uint8 image to class ids at the image's own size."""

    def __init__(self, model, weights=None, resize=None, net=None):
        if net is None:
            from ..net import Net
            from ..layer import TEST

            net = Net(model, weights, TEST) if weights else Net(model, TEST)
        self.net = net
        if not net.inputs:
            raise InputError(f"{model}: deploy net has no input blob (use input/input_shape or an Input layer)")
        self.input = net.inputs[0]
        self.shape = tuple(net.blobs[self.input].shape)
        self.resize = resize  # (W, H) requested by the user, or None for the net input size
        outs = list(net.outputs)
        self.output = "argMaxOut" if "argMaxOut" in outs else outs[0]

    def predict_net_size(self, chw: np.ndarray, source="<image>") -> np.ndarray:
        """Class ids at the net input size for an image already resized to it."""
        n, c, h, w = self.shape
        if chw.shape != (c, h, w):
            raise InputError(f"{source}: image is {chw.shape[0]}x{chw.shape[1]}x{chw.shape[2]} after resize but the "
                             f"deploy input is {c}x{h}x{w}; pass --resize {w}x{h} or fix input_shape")
        batch = np.zeros((n, c, h, w), np.float32)
        batch[0] = chw
        out = backend.to_numpy(self.net.forward(**{self.input: batch})[self.output])[0]
        if out.shape[0] == 1:
            return np.rint(out[0]).astype(np.int64)
        return np.argmax(out, axis=0)

    def predict(self, chw: np.ndarray, source="<image>") -> np.ndarray:
        """Class ids (int64 H×W) at the original image size."""
        _, c, h, w = self.shape
        oh, ow = chw.shape[1:]
        tw, th = self.resize if self.resize else (w, h)
        x = chw if (oh, ow) == (th, tw) else resize_lanczos_pil(chw, th, tw)
        if c == 1 and x.shape[0] == 3:
            x = x.mean(axis=0, keepdims=True).astype(np.uint8)
        pred = self.predict_net_size(x, source)
        return resize_nearest_pil(pred, oh, ow)


def _progress(it, total, desc, enabled):
    if not enabled:
        return it
    from tqdm import tqdm

    return tqdm(it, total=total, desc=desc)


def run_inference(seg: Segmenter, inputs, out_dir, blend=True, palette=PALETTE_5, progress=None) -> list[str]:
    """Segment every input; write ``<out>/<name>.png`` (class ids), ``<out>/overlay/<name>.png`` (blend) and
    ``output_name_list.txt``; videos give ``<out>/<name>_overlay.mp4``. Returns the written label files."""
    from PIL import Image

    items = collect_inputs(inputs)
    os.makedirs(out_dir, exist_ok=True)
    if blend:
        os.makedirs(os.path.join(out_dir, "overlay"), exist_ok=True)
    progress = progress if progress is not None else os.isatty(2)
    written = []
    for kind, path in _progress(items, len(items), "infer", progress):
        stem = os.path.splitext(os.path.basename(path))[0]
        if kind == "video":
            written.append(_infer_video(seg, path, os.path.join(out_dir, stem + "_overlay.mp4"), palette))
            continue
        chw = load_image(path, is_color=seg.shape[1] != 1)
        pred = seg.predict(chw, path)
        dst = os.path.join(out_dir, stem + ".png")
        save_png(Image.fromarray(np.clip(pred, 0, 255).astype(np.uint8), "L"), dst)
        written.append(dst)
        if blend:
            bgr = chw.transpose(1, 2, 0) if chw.shape[0] == 3 else np.repeat(chw[0][..., None], 3, 2)
            ov = chroma_blend(bgr, pred, palette)
            save_png(Image.fromarray(np.ascontiguousarray(ov[..., ::-1]), "RGB"),
                     os.path.join(out_dir, "overlay", stem + ".png"))
    atomic_write(os.path.join(out_dir, "output_name_list.txt"), "".join(p + "\n" for p in written))
    return written


def _infer_video(seg: Segmenter, path, dst, palette):
    iio = _imageio(path)
    reader = iio.get_reader(path)
    try:  # nested, so the reader is closed also when the writer cannot be opened
        fps = math.ceil(reader.get_meta_data().get("fps", 25))
        # the encoder writes a temporary file that replaces `dst` only once complete: an interrupted run
        # leaves no truncated video (nor a half-overwritten one) under the real name
        with atomic_path(dst) as tmp:
            writer = iio.get_writer(tmp, fps=fps)
            try:
                for frame in reader:
                    rgb = np.asarray(frame)[..., :3]
                    bgr = np.ascontiguousarray(rgb[..., ::-1])  # the net was trained on BGR
                    pred = seg.predict(bgr.transpose(2, 0, 1), path)
                    writer.append_data(chroma_blend(bgr, pred, palette)[..., ::-1])
            finally:
                writer.close()
    finally:
        reader.close()
    return dst


def _read_label(path, source_list):
    from PIL import Image

    if not os.path.isfile(path):
        raise InputError(f"{path}: label file does not exist (listed in {source_list})")
    with Image.open(path) as im:
        a = np.asarray(im)
    return a[..., 0] if a.ndim == 3 else a  # jacinto reads 3 channels and uses channel 0


def evaluate_lists(seg: Segmenter, image_list, label_list, num_classes=5, num_images=0, progress=None,
                   callback=None) -> ConfusionAccumulator:
    """Accumulate the confusion matrix over paired lists (labels at full resolution, §g.4)."""
    from .lmdbs import _load_pair_lists

    imgs, labs = _load_pair_lists(image_list, label_list)
    if num_images:
        imgs, labs = imgs[:num_images], labs[:num_images]
    acc = ConfusionAccumulator(num_classes)
    progress = progress if progress is not None else os.isatty(2)
    for n, (ip, lp) in enumerate(_progress(zip(imgs, labs, strict=True), len(imgs), "eval", progress)):
        chw = load_image(ip, is_color=seg.shape[1] != 1)
        lab = _read_label(lp, label_list)
        if lab.shape != chw.shape[1:]:
            raise InputError(f"{lp}: label is {lab.shape[1]}x{lab.shape[0]} but image {ip} is "
                             f"{chw.shape[2]}x{chw.shape[1]}")
        acc.update(lab, seg.predict(chw, ip), source=lp)
        if callback is not None:
            callback(n, acc)
    return acc
