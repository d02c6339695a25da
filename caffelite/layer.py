"""The Layer contract (Caffe's) and the one registry of layer types, keyed by Caffe type strings.

A layer subclass declares its blob counts, reads its options from ``self.param.<type>_param`` (defaults
come from the proto), creates learnable blobs in ``self.blobs`` in Caffe's order during ``setup``, and
implements ``reshape``, ``forward`` and (if it has one) ``backward``. It writes one body against ``xp``
(``self.xp`` or :func:`caffelite.backend.get_array_module`) so the same code runs on NumPy and CuPy.
Subclasses do not define ``__init__``.
"""

from __future__ import annotations

import logging

from .errors import NetError, UnsupportedError
from . import backend
from .registry import Registry

log = logging.getLogger("caffelite")

TRAIN, TEST = 0, 1

_REGISTRY = Registry("layer type")


def register(*type_names):
    """Class decorator: register a Layer subclass under one or more Caffe type strings."""

    def deco(cls):
        for t in type_names:
            _REGISTRY.add(t, cls)
        if not getattr(cls, "type", None) or cls.type == Layer.type:
            cls.type = type_names[0]
        return cls

    return deco


def registered_types() -> list[str]:
    """All registered Caffe type strings, sorted."""
    _load_builtin_layers()
    return _REGISTRY.names()


def layer_class(type_name: str, layer_name: str | None = None) -> type:
    """The class registered for ``type_name``; a NetError listing the known types otherwise."""
    _load_builtin_layers()
    try:
        return _REGISTRY[type_name]
    except KeyError:
        raise NetError(f"unknown layer type '{type_name}' (known types: {', '.join(_REGISTRY.names())})",
                       layer_name, type_name) from None


def create_layer(param, phase=TEST, extra=None):
    """Instantiate the layer described by LayerParameter ``param`` for ``phase``.

    ``extra`` is the BVLC LayerParameter of a layer converted from a BVLC file whose options have no
    caffe-jacinto field (Clip, Swish...); see :meth:`Layer.extra_param`.
    """
    cls = layer_class(param.type, param.name)
    layer = cls(param, phase, extra)
    layer.check_param_fields()
    return layer


_loaded = [False]


def _load_builtin_layers():
    if not _loaded[0]:
        _loaded[0] = True
        from . import layers  # noqa: F401  (registers every built-in layer)


#: LayerParameter sub-messages any layer may carry (read by the Net, hooks or data layers' helpers)
_ANY_LAYER_PARAMS = frozenset({"quantization_param"})


def _short(v):
    text = str(list(v) if hasattr(v, "__len__") and not isinstance(v, str) and not hasattr(v, "ListFields")
               else v).replace("\n", " ").strip()
    return text if len(text) <= 60 else text[:57] + "..."


class Layer:
    """Base class of every layer: Caffe's ``Layer`` contract.

    Attributes
    ----------
    param : LayerParameter (caffe-jacinto 0.17 classes)
    phase : TRAIN (0) or TEST (1)
    blobs : list of :class:`~caffelite.blob.Blob`, the learnable/state blobs in Caffe's order
    loss_weights : per-top loss weights (set by the Net from ``loss_weight`` or the loss default)
    """

    type = "Layer"
    #: blob-count contract (None = unconstrained), checked by :meth:`check_blob_counts`
    exact_num_bottom = None
    min_num_bottom = None
    max_num_bottom = None
    exact_num_top = None
    min_num_top = None
    max_num_top = None
    #: loss layers put weight 1 on their first top unless loss_weight says otherwise
    is_loss = False
    #: layers that may compute a top in place of their bottom
    allows_in_place = True
    #: the options the layer reads, ``{"<type>_param": ("field", ...)}``; any other field of those messages
    #: set to a non-default value raises UnsupportedError in :meth:`check_param_fields` (``None``: undeclared)
    param_fields = None
    #: whether backward will run on this layer: the Net sets it after its backward analysis, so a layer can
    #: skip what only backward needs (a copy of an in-place input, say); True for a layer outside a Net
    needs_backward = True

    def __init__(self, param, phase=TEST, extra=None):
        self.param = param
        self.phase = phase
        self.extra = extra
        self.blobs = []
        self.loss_weights = []
        self.param_propagate_down = []

    # -- identity / errors -------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.param.name

    def error(self, message) -> NetError:
        """A NetError naming this layer (raise it)."""
        return NetError(message, self.name, self.param.type)

    def unsupported(self, field, value=None) -> UnsupportedError:
        """An error for an option caffelite does not implement (raise it)."""
        v = "" if value is None else f" = {value}"
        return UnsupportedError(f"option {field}{v} is not supported", self.name, self.param.type)

    def extra_param(self, field):
        """A BVLC-only sub-message (e.g. ``clip_param``) of a layer converted from a BVLC file, else its default."""
        if self.extra is not None:
            return getattr(self.extra, field)
        from .proto import dialect
        return getattr(dialect("bvlc").LayerParameter(), field)

    def check_param_fields(self):
        """Raise UnsupportedError for an option the layer does not read (see :attr:`param_fields`), rather
        than ignoring it; log other layer types' ``*_param`` messages set on this layer, as Caffe ignores them."""
        if self.param_fields is None:
            return
        for fd, value in self.param.ListFields():
            name = fd.name
            if name in self.param_fields:
                allowed = self.param_fields[name]
                for sub, v in value.ListFields():
                    default = not sub.is_repeated and sub.message_type is None and v == sub.default_value
                    if sub.name not in allowed and not default:
                        raise self.unsupported(f"{name}.{sub.name}", _short(v))
            elif name.endswith("_param") and name not in _ANY_LAYER_PARAMS:
                log.warning("Layer %s (%s) ignores its %s", self.name, self.param.type, name)

    @property
    def xp(self):
        """The array module of the current mode (layers prefer the module of their inputs)."""
        return backend.current_xp()

    # -- contract ----------------------------------------------------------------------------------
    def check_blob_counts(self, bottom, top):
        def chk(n, exact, lo, hi, what):
            if exact is not None and n != exact:
                raise self.error(f"takes exactly {exact} {what} blob(s), got {n}")
            if lo is not None and n < lo:
                raise self.error(f"takes at least {lo} {what} blob(s), got {n}")
            if hi is not None and n > hi:
                raise self.error(f"takes at most {hi} {what} blob(s), got {n}")

        chk(len(bottom), self.exact_num_bottom, self.min_num_bottom, self.max_num_bottom, "bottom")
        chk(len(top), self.exact_num_top, self.min_num_top, self.max_num_top, "top")

    def setup(self, bottom, top):
        """One-time setup: read options, validate, create ``self.blobs`` (filled by fillers)."""

    def reshape(self, bottom, top):
        """Shape the tops (and internal buffers) from the bottoms. Runs before every forward."""
        raise NotImplementedError(f"{type(self).__name__}.reshape")

    def forward(self, bottom, top):
        """Compute ``top[i].data`` from ``bottom[j].data`` (and ``self.blobs``)."""
        raise NotImplementedError(f"{type(self).__name__}.forward")

    def backward(self, top, propagate_down, bottom):
        """Assign ``bottom[i].diff`` where ``propagate_down[i]``; accumulate into ``self.blobs[k].diff``."""
        if any(propagate_down):
            raise self.error("this layer has no backward (Caffe does not implement one)")

    @classmethod
    def has_backward(cls) -> bool:
        """Whether the layer implements backward (Caffe: NOT_IMPLEMENTED otherwise)."""
        return cls.backward is not Layer.backward

    def allow_force_backward(self, bottom_index: int) -> bool:
        """Whether force_backward may propagate into bottom ``bottom_index`` (labels, indices: no)."""
        return True

    def __repr__(self) -> str:
        return f"<{type(self).__name__} '{self.name}'>"
