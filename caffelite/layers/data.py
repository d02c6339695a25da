"""Data layers: Data (LMDB of Datum), ImageData (list of image files), caffe-jacinto's ImageLabelData
(paired image and label LMDBs, docs/jacinto-spec.md §e.1) and DummyData.

The prefetching layers read records in key order and wrap ("Restarting data prefetching from start.",
§e.3); decoding and augmentation run in background threads (:mod:`caffelite.data.prefetch`); and
``get_reader_state()``/``set_reader_state()`` expose the cursor and random state so a snapshot resumes
exactly where it stopped (Caffe restarts its readers from the first record; we do better).
"""

from __future__ import annotations

import numpy as np

from ..data.layerbase import PrefetchingDataLayer
from ..data.lmdb_io import is_lmdb
from ..data.reader import Cursor, ListSource, LMDBSource
from ..data.transformer import DataTransformer
from ..errors import NetError
from ..layer import Layer, register

LMDB = 1

#: transform_param fields the DataTransformer reads (the random-resize ones it refuses with its own message);
#: ``use_gpu_transform``/``display`` (where the transform runs, debug display) and the interpolation choice of
#: the random resize (itself refused) cannot change the result. Refused here: the stretch factors,
#: ``allow_upscale``, ``forward_packing`` and ``num_labels``, which caffelite does not implement
_TRANSFORM_FIELDS = ("scale", "mirror", "crop_size", "crop_h", "crop_w", "mean_file", "mean_value", "force_color",
                     "force_gray", "random_seed", "use_gpu_transform", "display", "interpolation_algo_down",
                     "interpolation_algo_up", "img_rand_resize_lower", "img_rand_resize_upper",
                     "rand_resize_ratio_lower", "rand_resize_ratio_upper", "resize_param", "noise_param",
                     "distort_param", "expand_param", "emit_constraint")


def _check_backend(layer, backend, source):
    """Only LMDB is implemented; accept a LEVELDB-declared source that is in fact an LMDB directory."""
    if backend != LMDB and not is_lmdb(source):
        raise layer.unsupported("backend", "LEVELDB (only LMDB databases can be read)")


def _auto_threads(threads: int):
    return None if not threads else max(1, min(int(threads), 8))


def _transform_records(layer, transformer, source, indices, draws):
    arrays, labels = [], []
    for i in indices:
        a, lab = source.get(i)
        arrays.append(a)
        labels.append(lab)
    names = [source.name(i) for i in indices]
    out = layer.buffer((len(arrays),) + transformer.output_shape(arrays[0].shape))
    return transformer.apply_batch(arrays, draws, out, names=names), np.asarray(labels, dtype=np.float32)


class _CursorDataLayer(PrefetchingDataLayer):
    """What the three readers share: ``self.cursor`` over ``self.source`` records, ``batch_size`` items a batch,
    the transformer's random draws planned in order, ``threads`` from the layer's parameter message."""

    _param_field = ""  # the LayerParameter field holding ``threads``

    def _workers(self):
        return _auto_threads(getattr(self.param, self._param_field).threads)

    def _plan_task(self):
        return self.cursor.take(self.batch_size), self.transformer.draws(self.batch_size, self.rng)

    def _work(self, task):
        return _transform_records(self, self.transformer, self.source, *task)

    def _state(self):
        return {"cursor": self.cursor.state()}

    def _restore(self, st):
        self.cursor.set_state(st["cursor"])

    def _open_common(self, p):
        """Checks and set-up shared by Data and ImageData (``p``: their parameter message); returns the
        transform_param."""
        if not p.source:
            raise self.error(f"{self._param_field}.source is required")
        if not p.batch_size:
            raise self.error(f"{self._param_field}.batch_size must be positive")
        if p.HasField("mean_file") or p.HasField("crop_size") or p.HasField("mirror") or p.HasField("scale"):
            raise self.error(f"deprecated {self._param_field} transform fields: move scale/mean_file/crop_size/"
                             "mirror to transform_param (caffelite upgrade does this)")
        tp = self.param.transform_param
        self.transformer = DataTransformer(tp, self.phase, self.error)
        self.batch_size = int(p.batch_size)
        self._seed_rng(tp.random_seed)
        return tp


@register("Data")
class DataLayer(_CursorDataLayer):
    """Caffe's Data layer: Datum records from an LMDB; top 0 = transformed data, top 1 = labels [N]."""

    min_num_top = 1
    max_num_top = 2
    _param_field = "data_param"
    #: every DataParameter field is read (the deprecated scale/mean_file/crop_size/mirror to refuse them with
    #: a hint) except parser_threads, a thread count that cannot change the result (§e.3)
    param_fields = {"data_param": ("source", "batch_size", "rand_skip", "backend", "scale", "mean_file",
                                   "crop_size", "mirror", "force_encoded_color", "prefetch", "threads",
                                   "parser_threads", "cache", "shuffle"),
                    "transform_param": _TRANSFORM_FIELDS}

    def _open(self):
        p = self.param.data_param
        tp = self._open_common(p)
        _check_backend(self, p.backend, p.source)
        self.source = LMDBSource(p.source, tp.force_color or p.force_encoded_color, tp.force_gray)
        start = int(self.rng.integers(p.rand_skip)) if p.rand_skip else 0
        # NVCaffe shuffles only cached TRAIN data (§e.3); otherwise records come in key order
        shuffle = p.shuffle and p.cache and self.phase == 0
        shuffle_rng = np.random.default_rng(int(self.rng.integers(0, 2**63))) if shuffle else None
        self.cursor = Cursor(len(self.source), shuffle_rng, start=start)
        if p.prefetch:
            self.prefetch_depth = int(p.prefetch)


@register("ImageData")
class ImageDataLayer(_CursorDataLayer):
    """Caffe's ImageData layer: ``<path> <label>`` lines, optional resize, shuffle per epoch."""

    exact_num_top = 2
    _param_field = "image_data_param"
    #: all read (deprecated transform fields and short_side to refuse them) except ``cache``, an in-memory
    #: cache of the decoded images that cannot change the result
    param_fields = {"image_data_param": ("source", "batch_size", "rand_skip", "shuffle", "new_height", "new_width",
                                         "is_color", "scale", "mean_file", "crop_size", "mirror", "root_folder",
                                         "short_side", "threads", "cache"),
                    "transform_param": _TRANSFORM_FIELDS}

    def _open(self):
        p = self.param.image_data_param
        if p.short_side:
            raise self.unsupported("image_data_param.short_side", p.short_side)
        if (p.new_height > 0) != (p.new_width > 0):
            raise self.error("new_height and new_width must be set together")
        self._open_common(p)
        self.source = ListSource(p.source, p.root_folder, p.new_height, p.new_width, p.is_color)
        shuffle_rng = np.random.default_rng(int(self.rng.integers(0, 2**63))) if p.shuffle else None
        start = int(self.rng.integers(p.rand_skip)) if p.rand_skip else 0
        self.cursor = Cursor(len(self.source), shuffle_rng, start)


@register("ImageLabelData")
class ImageLabelDataLayer(_CursorDataLayer):
    """caffe-jacinto's ImageLabelData (§e.1): image and label LMDBs read in lock-step, record i with
    record i, the same crop and mirror for both. Tops: data [N,C,h,w], label [N,1,h,w].

    Quirks kept from 0.17: ``shuffle`` has no effect (order comes from the LMDB creation shuffle); the label
    gets the image's scale but a zero mean; ``mirror: true`` flips at random in the TEST phase too (Caffe's
    DataTransformer draws the mirror coin in both phases, only the crop is centred in TEST, §e.2), so a test
    net that should not flip must say ``mirror: false``, as jacinto's generated test.prototxt does. Fields of
    0.15/0.16's list-based layer are rejected.
    """

    exact_num_top = 2
    _param_field = "image_label_data_param"
    #: fields 0.17 ignores (§e.1): they belonged to 0.15/0.16's list-based ImageLabelListData; rejected rather
    #: than ignored so that a net written for that layer does not silently train differently
    _UNUSED = ("rand_skip", "scale_prob", "scale_min", "scale_max", "data_dir", "label_slice", "image_dir",
               "label_dir", "padding", "image_dir2", "image_list_path2", "size_min", "size_max", "check_image_files")
    #: the read fields plus _UNUSED, which :meth:`_open` refuses with a message naming the 0.16 layer
    param_fields = {"image_label_data_param": ("image_list_path", "label_list_path", "batch_size", "shuffle",
                                               "threads", "backend") + _UNUSED,
                    "transform_param": _TRANSFORM_FIELDS}

    def _open(self):
        p = self.param.image_label_data_param
        for f in self._UNUSED:
            if p.HasField(f):
                raise self.unsupported(f"image_label_data_param.{f} (0.16 ImageLabelListData only; "
                                       "0.17's ImageLabelData ignores it)")
        if not p.image_list_path or not p.label_list_path:
            raise self.error("image_label_data_param needs image_list_path and label_list_path")
        _check_backend(self, p.backend, p.image_list_path)
        _check_backend(self, p.backend, p.label_list_path)
        tp = self.param.transform_param
        self._seed_rng(tp.random_seed)
        self.transformer = DataTransformer(tp, self.phase, self.error)
        zeros = np.zeros(max(1, len(tp.mean_value)), dtype=np.float32)
        self.label_transformer = DataTransformer(tp, self.phase, self.error, mean_override=zeros)
        self.label_transformer.mean_image = None
        self.batch_size = int(p.batch_size)
        self.images = LMDBSource(p.image_list_path, tp.force_color, tp.force_gray)
        self.labels = LMDBSource(p.label_list_path)
        if len(self.images) != len(self.labels):
            raise NetError(f"image LMDB {self.images.path} has {len(self.images)} records but label LMDB "
                           f"{self.labels.path} has {len(self.labels)}", self.name, self.param.type)
        self.cursor = Cursor(len(self.images))  # both readers start at the first key (§e.1)

    def _work(self, task):
        indices, draws = task
        imgs, labs = [], []
        for i in indices:
            a, _ = self.images.get(i)
            b, _ = self.labels.get(i)
            if a.shape[1:] != b.shape[1:]:
                raise NetError(f"record {i}: image {self.images.name(i)} is {a.shape[1]}x{a.shape[2]} but label "
                               f"{self.labels.name(i)} is {b.shape[1]}x{b.shape[2]}", self.name, self.param.type)
            imgs.append(a)
            labs.append(b)
        n, ti, tl = len(indices), self.transformer, self.label_transformer
        data = ti.apply_batch(imgs, draws, self.buffer((n,) + ti.output_shape(imgs[0].shape)),
                              names=[self.images.name(i) for i in indices])
        label = tl.apply_batch(labs, draws, self.buffer((n,) + tl.output_shape(labs[0].shape)),
                               names=[self.labels.name(i) for i in indices])
        return (data, label)


@register("DummyData")
class DummyDataLayer(Layer):
    """Caffe's DummyData: tops of given shapes filled by fillers (refilled each forward unless constant)."""

    exact_num_bottom = 0
    min_num_top = 1
    param_fields = {"dummy_data_param": ("data_filler", "shape", "num", "channels", "height", "width")}

    def setup(self, bottom, top):
        p = self.param.dummy_data_param
        n = len(top)
        if len(p.shape):
            if len(p.shape) not in (1, n):
                raise self.error(f"dummy_data_param.shape must be given once or once per top ({n})")
            shapes = [tuple(int(d) for d in p.shape[i if len(p.shape) > 1 else 0].dim) for i in range(n)]
        else:
            legacy = [p.num, p.channels, p.height, p.width]
            if any(len(f) not in (1, n) for f in legacy):
                raise self.error("num/channels/height/width must each be given once or once per top")
            shapes = [tuple(int(f[i if len(f) > 1 else 0]) for f in legacy) for i in range(n)]
        if len(p.data_filler) not in (0, 1, n):
            raise self.error(f"data_filler must be given 0, 1 or {n} times")
        fillers = [p.data_filler[i if len(p.data_filler) > 1 else 0] if len(p.data_filler) else None
                   for i in range(n)]
        self._fillers = fillers
        self._refill = [f is not None and f.type != "constant" for f in fillers]
        for t, s, f in zip(top, shapes, fillers, strict=True):
            t.reshape(s)
            self._fill(t, f)

    def _fill(self, blob, filler):
        if filler is None:
            blob.data[...] = 0
            return
        if filler.type == "constant":
            blob.data[...] = filler.value
            return
        from ..fillers import fill

        fill(blob, filler)

    def reshape(self, bottom, top):
        pass

    def forward(self, bottom, top):
        for t, f, r in zip(top, self._fillers, self._refill, strict=True):
            if r:
                self._fill(t, f)
