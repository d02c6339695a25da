"""NetSpec: write Caffe nets in Python, as pycaffe's ``caffe.net_spec``::

    from caffelite import layers as L, params as P, to_proto
    n = caffelite.NetSpec()
    n.data, n.label = L.Data(source="train_lmdb", backend=P.Data.LMDB, batch_size=64, ntop=2)
    n.conv1 = L.Convolution(n.data, kernel_size=5, num_output=20, weight_filler=dict(type="xavier"))
    n.loss = L.SoftmaxWithLoss(n.conv1, n.label)
    print(n.to_proto())

``L.<Type>(*bottoms, **kwargs)`` makes a layer of Caffe type ``<Type>``: keyword arguments go to the layer's
own ``<type>_param`` message when it has such a field (``kernel_size=5`` -> ``convolution_param``), else to
the LayerParameter (``name``, ``loss_weight``, ``param=[...]``, ``*_param=dict(...)``); ``ntop`` (default 1)
and ``in_place`` are NetSpec's own. ``P.<Type>`` is the ``<Type>Parameter`` message class, for enums
(``P.Pooling.MAX``). Layer and top names come from the NetSpec attribute names, else ``<Type><n>``.
"""

from __future__ import annotations

import collections
import difflib

from .errors import NetError
from .proto import caffe_pb2

__all__ = ["NetSpec", "Top", "Function", "layers", "params", "to_proto", "param_name_dict", "assign_proto"]

# layer types whose options live in another type's message (Caffe's layer factory)
_SHARED_PARAM = {"Deconvolution": "convolution", "Im2col": "convolution", "MemoryData": "memory_data"}


class UnknownLayerTypeError(NetError, AttributeError):
    """``L.<Type>`` for a type caffelite has no layer for (an AttributeError too, so ``hasattr`` works)."""


def param_name_dict():
    """Layer type -> the name of its parameter field without ``_param`` (``"Convolution"`` -> ``"convolution"``)."""
    out = {}
    for fd in caffe_pb2.LayerParameter.DESCRIPTOR.fields:
        if fd.name.endswith("_param") and fd.message_type is not None:
            mname = fd.message_type.name
            if mname.endswith("Parameter"):
                out[mname[:-len("Parameter")]] = fd.name[:-len("_param")]
    out.update(_SHARED_PARAM)
    return out


def _known_types():
    from .layer import registered_types
    return set(registered_types()) | {"Python"}


def assign_proto(proto, name, val, where=""):
    """Set field ``name`` of message ``proto`` from a Python value: scalars, lists (repeated fields; dicts in a
    list become sub-messages) and dicts (sub-messages), recursively; enum fields accept their names."""
    fields = proto.DESCRIPTOR.fields_by_name
    path = f"{where}.{name}" if where else name
    if name not in fields:
        close = difflib.get_close_matches(name, list(fields), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise NetError(f"NetSpec: {proto.DESCRIPTOR.name} has no field '{path}'{hint}")
    fd = fields[name]
    repeated = fd.is_repeated
    try:
        if repeated:
            vals = val if isinstance(val, (list, tuple)) else [val]
            target = getattr(proto, name)
            for v in vals:
                if fd.message_type is not None:
                    if not isinstance(v, dict):
                        raise TypeError(f"expected a dict for each {fd.message_type.name}, got {type(v).__name__}")
                    item = target.add()
                    for k, sub in v.items():
                        assign_proto(item, k, sub, path)
                else:
                    target.append(v)
        elif fd.message_type is not None:
            if not isinstance(val, dict):
                raise TypeError(f"expected a dict for the {fd.message_type.name} message, got {type(val).__name__}")
            sub_msg = getattr(proto, name)
            sub_msg.SetInParent()
            for k, sub in val.items():
                assign_proto(sub_msg, k, sub, path)
        else:
            setattr(proto, name, val)
    except NetError:
        raise
    except (TypeError, ValueError) as e:
        raise NetError(f"NetSpec: bad value {val!r} for field '{path}': {e}") from None


class Top:
    """One output blob of a :class:`Function` (what ``L.Type(...)`` returns)."""

    def __init__(self, fn, n):
        self.fn = fn
        self.n = n

    def to_proto(self):
        """A NetParameter of the layers this top depends on."""
        return to_proto(self)

    def _update(self, params):
        self.fn.params.update(params)

    def _to_proto(self, layers, names, autonames):
        return self.fn._to_proto(layers, names, autonames)


class Function:
    """A layer in the making: its type, bottoms (Tops) and keyword parameters."""

    def __init__(self, type_name, inputs, params):
        self.type_name = type_name
        for i, b in enumerate(inputs):
            if not isinstance(b, Top):
                raise NetError(f"NetSpec: bottom {i} of a {type_name} layer is a {type(b).__name__}, not a layer "
                               f"output (a Top)")
        self.inputs = inputs
        self.params = dict(params)
        self.ntop = self.params.pop("ntop", 1)
        self.in_place = self.params.pop("in_place", False)
        if self.in_place and len(inputs) != self.ntop:
            raise NetError(f"NetSpec: an in_place {type_name} layer needs as many bottoms as tops")
        self.tops = tuple(Top(self, n) for n in range(self.ntop))

    def _get_name(self, names, autonames):
        if self not in names and self.ntop > 0:
            names[self] = self._get_top_name(self.tops[0], names, autonames)
        elif self not in names:
            autonames[self.type_name] += 1
            names[self] = self.type_name + str(autonames[self.type_name])
        return names[self]

    def _get_top_name(self, top, names, autonames):
        if top not in names:
            autonames[top.fn.type_name] += 1
            names[top] = top.fn.type_name + str(autonames[top.fn.type_name])
        return names[top]

    def _to_proto(self, layers, names, autonames):
        if self in layers:
            return
        bottom_names = []
        for inp in self.inputs:
            inp._to_proto(layers, names, autonames)
            bottom_names.append(layers[inp.fn].top[inp.n])
        layer = caffe_pb2.LayerParameter()
        layer.type = self.type_name
        layer.bottom.extend(bottom_names)
        if self.in_place:
            layer.top.extend(layer.bottom)
        else:
            for top in self.tops:
                layer.top.append(self._get_top_name(top, names, autonames))
        layer.name = self._get_name(names, autonames)
        pname = param_name_dict().get(self.type_name)
        sub_fields = getattr(caffe_pb2.LayerParameter(), pname + "_param").DESCRIPTOR.fields_by_name if pname \
            else {}
        where = f"layer '{layer.name}' ({self.type_name})"
        layer_fields = layer.DESCRIPTOR.fields_by_name
        try:
            for k, v in self.params.items():
                if k not in sub_fields and k not in layer_fields:
                    close = difflib.get_close_matches(k, [*sub_fields, *layer_fields], n=1)
                    hint = f" (did you mean '{close[0]}'?)" if close else ""
                    where_p = f"{pname}_param nor " if pname else ""
                    raise NetError(f"NetSpec: neither {where_p}LayerParameter has a field '{k}'{hint}")
                if k.endswith("param") or k not in sub_fields:
                    assign_proto(layer, k, v)
                else:
                    assign_proto(getattr(layer, pname + "_param"), k, v, pname + "_param")
        except NetError as e:
            raise NetError(f"{where}: {e}") from None
        layers[self] = layer


class NetSpec:
    """A net under construction: assign Tops to attributes (``n.conv1 = L.Convolution(...)``) and call
    :meth:`to_proto`. The attribute names become the top (and layer) names."""

    def __init__(self):
        super().__setattr__("tops", collections.OrderedDict())

    def __setattr__(self, name, value):
        self.tops[name] = value

    def __getattr__(self, name):
        try:
            return self.tops[name]
        except KeyError:
            raise AttributeError(f"NetSpec has no top named {name!r}") from None

    def __setitem__(self, key, value):
        self.__setattr__(key, value)

    def __getitem__(self, item):
        return self.__getattr__(item)

    def __delitem__(self, name):
        del self.tops[name]

    def keys(self):
        return list(self.tops.keys())

    def vals(self):
        return list(self.tops.values())

    def to_proto(self):
        """The NetParameter of every layer reachable from the assigned tops."""
        names = {v: k for k, v in self.tops.items()}
        autonames = collections.Counter()
        layers = collections.OrderedDict()
        for top in self.tops.values():
            top._to_proto(layers, names, autonames)
        net = caffe_pb2.NetParameter()
        net.layer.extend(layers.values())
        return net


def to_proto(*tops):
    """A NetParameter of the layers the given Tops depend on (names automatic)."""
    layers = collections.OrderedDict()
    autonames = collections.Counter()
    for top in tops:
        top.fn._to_proto(layers, {}, autonames)
    net = caffe_pb2.NetParameter()
    net.layer.extend(layers.values())
    return net


class Layers:
    """``L.<Type>(*bottoms, **params)``: a layer of Caffe type ``<Type>``; returns its Top (a tuple for
    ``ntop > 1``, the Function itself for ``ntop=0``)."""

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        known = _known_types()
        if name not in known:
            close = difflib.get_close_matches(name, sorted(known), n=3)
            hint = f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else ""
            raise UnknownLayerTypeError(f"NetSpec: unknown layer type '{name}'{hint}; caffelite knows: "
                                        f"{', '.join(sorted(known))}")

        def layer_fn(*args, **kwargs):
            fn = Function(name, args, kwargs)
            if fn.ntop == 0:
                return fn
            if fn.ntop == 1:
                return fn.tops[0]
            return fn.tops

        layer_fn.__name__ = name
        return layer_fn


class Parameters:
    """``P.<Type>``: the ``<Type>Parameter`` message class (for its enum values, e.g. ``P.Pooling.MAX``)."""

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        cls = getattr(caffe_pb2, name + "Parameter", None)
        if cls is None:
            raise AttributeError(f"no Caffe parameter message {name}Parameter")
        return cls


layers = Layers()
params = Parameters()
