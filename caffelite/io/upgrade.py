"""Legacy net and solver upgrades, with the semantics of BVLC's ``upgrade_net_proto_text`` /
``upgrade_net_proto_binary`` / ``upgrade_solver_proto_text`` (and caffe-jacinto's ``UpgradeNetAsNeeded``,
spec docs/jacinto-spec.md §h).

Order (as Caffe applies them): V0 -> V1 (padding layers folded into the next conv/pool), old data
transformation fields -> ``transform_param``, V1 -> V2 (``layers`` -> ``layer``, enum types -> strings,
``blobs_lr``/``weight_decay``/named params -> ParamSpec), ``input``/``input_dim``/``input_shape`` -> an
``Input`` layer named "input" placed first, BatchNorm with three param specs -> lr_mult/decay_mult 0 (the
specs are kept). Solver: ``solver_type`` enum -> ``type`` string. All functions work in place on
caffe-jacinto 0.17 messages and return whether anything changed; problems raise FileFormatError.
"""

from __future__ import annotations

import logging

from ..errors import FileFormatError
from ..proto import caffe_pb2

log = logging.getLogger("caffelite.upgrade")

#: V1LayerParameter.LayerType name -> V2 type string
V1_TYPES = {
    "NONE": "", "ABSVAL": "AbsVal", "ACCURACY": "Accuracy", "ARGMAX": "ArgMax", "BNLL": "BNLL",
    "CONCAT": "Concat", "CONTRASTIVE_LOSS": "ContrastiveLoss", "CONVOLUTION": "Convolution",
    "DECONVOLUTION": "Deconvolution", "DATA": "Data", "DROPOUT": "Dropout", "DUMMY_DATA": "DummyData",
    "EUCLIDEAN_LOSS": "EuclideanLoss", "ELTWISE": "Eltwise", "EXP": "Exp", "FLATTEN": "Flatten",
    "HDF5_DATA": "HDF5Data", "HDF5_OUTPUT": "HDF5Output", "HINGE_LOSS": "HingeLoss", "IM2COL": "Im2col",
    "IMAGE_DATA": "ImageData", "INFOGAIN_LOSS": "InfogainLoss", "INNER_PRODUCT": "InnerProduct", "LRN": "LRN",
    "MEMORY_DATA": "MemoryData", "MULTINOMIAL_LOGISTIC_LOSS": "MultinomialLogisticLoss", "MVN": "MVN",
    "POOLING": "Pooling", "POWER": "Power", "RELU": "ReLU", "SIGMOID": "Sigmoid",
    "SIGMOID_CROSS_ENTROPY_LOSS": "SigmoidCrossEntropyLoss", "SILENCE": "Silence", "SOFTMAX": "Softmax",
    "SOFTMAX_LOSS": "SoftmaxWithLoss", "SPLIT": "Split", "SLICE": "Slice", "TANH": "TanH",
    "WINDOW_DATA": "WindowData", "THRESHOLD": "Threshold",
}

#: V0 type string -> V1 enum name
V0_TYPES = {
    "accuracy": "ACCURACY", "bnll": "BNLL", "concat": "CONCAT", "conv": "CONVOLUTION", "data": "DATA",
    "dropout": "DROPOUT", "euclidean_loss": "EUCLIDEAN_LOSS", "flatten": "FLATTEN", "hdf5_data": "HDF5_DATA",
    "hdf5_output": "HDF5_OUTPUT", "im2col": "IM2COL", "images": "IMAGE_DATA", "infogain_loss": "INFOGAIN_LOSS",
    "innerproduct": "INNER_PRODUCT", "lrn": "LRN", "multinomial_logistic_loss": "MULTINOMIAL_LOGISTIC_LOSS",
    "pool": "POOLING", "relu": "RELU", "sigmoid": "SIGMOID", "softmax": "SOFTMAX", "softmax_loss": "SOFTMAX_LOSS",
    "split": "SPLIT", "tanh": "TANH", "window_data": "WINDOW_DATA",
}

SOLVER_TYPES = {0: "SGD", 1: "Nesterov", 2: "AdaGrad", 3: "RMSProp", 4: "AdaDelta", 5: "Adam"}

#: V1LayerParameter fields copied verbatim into the V2 LayerParameter (same message types)
_V1_COPIED = (
    "accuracy_param", "argmax_param", "concat_param", "contrastive_loss_param", "convolution_param",
    "data_param", "dropout_param", "dummy_data_param", "eltwise_param", "exp_param", "hdf5_data_param",
    "hdf5_output_param", "hinge_loss_param", "image_data_param", "infogain_loss_param", "inner_product_param",
    "lrn_param", "memory_data_param", "mvn_param", "pooling_param", "power_param", "relu_param", "sigmoid_param",
    "softmax_param", "slice_param", "tanh_param", "threshold_param", "window_data_param", "transform_param",
    "loss_param",
)
#: V1 types whose data parameter held the transformation fields (UpgradeNetDataTransformation)
_DATA_PARAMS = {"DATA": "data_param", "IMAGE_DATA": "image_data_param", "WINDOW_DATA": "window_data_param"}
_TRANSFORM_FIELDS = ("scale", "mean_file", "crop_size", "mirror")

_V1 = caffe_pb2.V1LayerParameter
_V1_ENUM = _V1.DESCRIPTOR.enum_types_by_name["LayerType"]


def _v1_name(v: int) -> str:
    ev = _V1_ENUM.values_by_number.get(v)
    return ev.name if ev else str(v)


# --------------------------------------------------------------------------------------------- V0 -> V1
def _fold_padding_layers(net, path):
    """Remove V0 ``padding`` layers, moving their pad into the conv/pool layer that reads them."""
    last_top = {name: -1 for name in net.input}
    kept = []
    old = list(net.layers)
    for i, conn in enumerate(old):
        lp = conn.layer
        if lp.type != "padding":
            kept.append(caffe_pb2.V1LayerParameter())
            kept[-1].CopyFrom(conn)
        for j, blob in enumerate(conn.bottom):
            if blob not in last_top:
                raise FileFormatError(path, f"Unknown blob input {blob} to layer {j}")
            src = last_top[blob]
            if src == -1 or old[src].layer.type != "padding":
                continue
            source = old[src]
            if lp.type not in ("conv", "pool"):
                raise FileFormatError(path, f"Padding layer input to non-convolutional / non-pooling layer type "
                                            f"{lp.type}")
            if len(conn.bottom) != 1 or len(source.bottom) != 1 or len(source.top) != 1:
                raise FileFormatError(path, "Padding layer must have one input and one output and feed a "
                                            "single-input layer")
            kept[-1].layer.pad = source.layer.pad
            kept[-1].bottom[j] = source.bottom[0]
        for blob in conn.top:
            last_top[blob] = i
    del net.layers[:]
    net.layers.extend(kept)


def _carry_unknown(src, dst, layer_name, path) -> None:
    """Move the fields no schema of ``src`` declares (another fork's) onto the upgraded ``dst``, byte for byte,
    where ``dst``'s class does not declare their number either; a number it declares would be misread there, so
    that field is dropped with a warning naming the layer (never silently)."""
    from google.protobuf import unknown_fields

    from .wire import unknown_field_bytes

    kept = []
    for f in unknown_fields.UnknownFieldSet(src):
        if f.field_number in dst.DESCRIPTOR.fields_by_number:
            log.warning("%slayer '%s': field %d of another Caffe fork cannot be kept across the legacy upgrade "
                        "(%s declares that number); dropped", f"{path}: " if path else "", layer_name,
                        f.field_number, dst.DESCRIPTOR.name)
        else:
            kept.append(unknown_field_bytes(f))
    if kept:
        dst.MergeFromString(b"".join(kept))


def _set(msg, field, value):
    f = msg.DESCRIPTOR.fields_by_name[field]
    if f.is_repeated:
        getattr(msg, field).append(value)
    else:
        setattr(msg, field, value)


def _v0_to_v1_layer(conn, path):
    """Upgrade one V0 layer connection (``layers { layer { ... } bottom top }``) to a V1LayerParameter."""
    v0 = conn.layer
    out = caffe_pb2.V1LayerParameter()
    out.bottom.extend(conn.bottom)
    out.top.extend(conn.top)
    t = v0.type
    if v0.HasField("name"):
        out.name = v0.name
    if v0.HasField("type"):
        if t not in V0_TYPES:
            raise FileFormatError(path, f"Unknown V0 layer type '{t}' in layer '{v0.name}'")
        out.type = _V1_ENUM.values_by_name[V0_TYPES[t]].number
    for b in v0.blobs:
        out.blobs.add().CopyFrom(b)
    out.blobs_lr.extend(v0.blobs_lr)
    out.weight_decay.extend(v0.weight_decay)

    def bad(field):
        return FileFormatError(path, f"Unknown parameter {field} for layer type {t} (layer '{v0.name}')")

    # field -> {v0 type: (param message, field)}; repeated conv fields are appended (ConvolutionParameter V2)
    table = {
        "num_output": {"conv": ("convolution_param", "num_output"),
                       "innerproduct": ("inner_product_param", "num_output")},
        "biasterm": {"conv": ("convolution_param", "bias_term"), "innerproduct": ("inner_product_param", "bias_term")},
        "weight_filler": {"conv": ("convolution_param", "weight_filler"),
                          "innerproduct": ("inner_product_param", "weight_filler")},
        "bias_filler": {"conv": ("convolution_param", "bias_filler"),
                        "innerproduct": ("inner_product_param", "bias_filler")},
        "pad": {"conv": ("convolution_param", "pad"), "pool": ("pooling_param", "pad")},
        "kernelsize": {"conv": ("convolution_param", "kernel_size"), "pool": ("pooling_param", "kernel_size")},
        "group": {"conv": ("convolution_param", "group")},
        "stride": {"conv": ("convolution_param", "stride"), "pool": ("pooling_param", "stride")},
        "pool": {"pool": ("pooling_param", "pool")},
        "dropout_ratio": {"dropout": ("dropout_param", "dropout_ratio")},
        "local_size": {"lrn": ("lrn_param", "local_size")},
        "alpha": {"lrn": ("lrn_param", "alpha")},
        "beta": {"lrn": ("lrn_param", "beta")},
        "k": {"lrn": ("lrn_param", "k")},
        "source": {"data": ("data_param", "source"), "hdf5_data": ("hdf5_data_param", "source"),
                   "images": ("image_data_param", "source"), "window_data": ("window_data_param", "source"),
                   "infogain_loss": ("infogain_loss_param", "source")},
        "scale": {"data": ("data_param", "scale"), "images": ("image_data_param", "scale"),
                  "window_data": ("window_data_param", "scale")},
        "meanfile": {"data": ("data_param", "mean_file"), "images": ("image_data_param", "mean_file"),
                     "window_data": ("window_data_param", "mean_file")},
        "batchsize": {"data": ("data_param", "batch_size"), "hdf5_data": ("hdf5_data_param", "batch_size"),
                      "images": ("image_data_param", "batch_size"),
                      "window_data": ("window_data_param", "batch_size")},
        "cropsize": {"data": ("data_param", "crop_size"), "images": ("image_data_param", "crop_size"),
                     "window_data": ("window_data_param", "crop_size")},
        "mirror": {"data": ("data_param", "mirror"), "images": ("image_data_param", "mirror"),
                   "window_data": ("window_data_param", "mirror")},
        "rand_skip": {"data": ("data_param", "rand_skip"), "images": ("image_data_param", "rand_skip")},
        "shuffle_images": {"images": ("image_data_param", "shuffle")},
        "new_height": {"images": ("image_data_param", "new_height")},
        "new_width": {"images": ("image_data_param", "new_width")},
        "concat_dim": {"concat": ("concat_param", "concat_dim")},
        "det_fg_threshold": {"window_data": ("window_data_param", "fg_threshold")},
        "det_bg_threshold": {"window_data": ("window_data_param", "bg_threshold")},
        "det_fg_fraction": {"window_data": ("window_data_param", "fg_fraction")},
        "det_context_pad": {"window_data": ("window_data_param", "context_pad")},
        "det_crop_mode": {"window_data": ("window_data_param", "crop_mode")},
        "hdf5_output_param": {"hdf5_output": ("hdf5_output_param", None)},
    }
    for fd, value in v0.ListFields():
        if fd.name in ("name", "type", "blobs", "blobs_lr", "weight_decay"):
            continue
        targets = table.get(fd.name)
        if targets is None or t not in targets:
            raise bad(fd.name)
        pname, fname = targets[t]
        pmsg = getattr(out, pname)
        if fname is None:
            pmsg.CopyFrom(value)
        elif fd.message_type is not None:
            getattr(pmsg, fname).CopyFrom(value)
        else:
            _set(pmsg, fname, value)
    _carry_unknown(conn, out, v0.name, path)
    _carry_unknown(v0, out, v0.name, path)
    return out


def upgrade_v0_net(net, path=None) -> None:
    """V0 (``layers { layer { type: "conv" ... } }``) -> V1 in place (UpgradeV0Net)."""
    _fold_padding_layers(net, path)
    new = [_v0_to_v1_layer(conn, path) for conn in net.layers]
    del net.layers[:]
    net.layers.extend(new)


def upgrade_data_transformation(net) -> bool:
    """Move V1 data layers' scale/mean_file/crop_size/mirror into ``transform_param``."""
    needs = any(
        _v1_name(l.type) in _DATA_PARAMS and any(getattr(l, _DATA_PARAMS[_v1_name(l.type)]).HasField(f)
                                                  for f in _TRANSFORM_FIELDS)
        for l in net.layers)
    if not needs:
        return False
    for l in net.layers:
        pname = _DATA_PARAMS.get(_v1_name(l.type))
        if pname is None:
            continue
        src = getattr(l, pname)
        l.transform_param.SetInParent()
        for f in _TRANSFORM_FIELDS:
            if src.HasField(f):
                setattr(l.transform_param, f, getattr(src, f))
                src.ClearField(f)
    return True


# --------------------------------------------------------------------------------------------- V1 -> V2
def upgrade_v1_layer(v1, path=None):
    """One V1LayerParameter -> LayerParameter (UpgradeV1LayerParameter)."""
    out = caffe_pb2.LayerParameter()
    out.bottom.extend(v1.bottom)
    out.top.extend(v1.top)
    if v1.HasField("name"):
        out.name = v1.name
    if v1.HasField("type"):
        out.type = V1_TYPES.get(_v1_name(v1.type), "")
    for b in v1.blobs:
        out.blobs.add().CopyFrom(b)

    def spec(i):
        while len(out.param) <= i:
            out.param.add()
        return out.param[i]

    for i, name in enumerate(v1.param):
        spec(i).name = name
    for i, mode in enumerate(v1.blob_share_mode):
        spec(i).share_mode = mode
    for i, lr in enumerate(v1.blobs_lr):
        spec(i).lr_mult = lr
    for i, wd in enumerate(v1.weight_decay):
        spec(i).decay_mult = wd
    out.loss_weight.extend(v1.loss_weight)
    for f in _V1_COPIED:
        if v1.HasField(f):
            getattr(out, f).CopyFrom(getattr(v1, f))
    for r in v1.include:
        out.include.add().CopyFrom(r)
    for r in v1.exclude:
        out.exclude.add().CopyFrom(r)
    if v1.HasField("layer"):
        log.error("Input NetParameter has V0 layer -- ignoring.")
    _carry_unknown(v1, out, v1.name, path)
    return out


def upgrade_v1_net(net, path=None) -> None:
    """``layers`` (V1) -> ``layer`` (V2) in place (UpgradeV1Net)."""
    if len(net.layer):
        raise FileFormatError(path, "Refusing to upgrade inconsistent NetParameter input; the definition "
                                    "includes both 'layer' and 'layers' fields.")
    new = [upgrade_v1_layer(l, path) for l in net.layers]
    net.ClearField("layers")
    net.layer.extend(new)


def upgrade_net_input(net) -> bool:
    """``input`` + ``input_shape``/``input_dim`` -> an ``Input`` layer named "input", first (UpgradeNetInput).

    A bare ``input`` without shapes (legacy caffemodels) is simply stripped, as Caffe does.
    """
    if not len(net.input) and not len(net.input_shape) and not len(net.input_dim):
        return False
    if len(net.input_shape) or len(net.input_dim):
        lp = caffe_pb2.LayerParameter(name="input", type="Input")
        for i, name in enumerate(net.input):
            lp.top.append(name)
            shape = lp.input_param.shape.add()
            if len(net.input_shape):
                shape.CopyFrom(net.input_shape[i])
            else:
                shape.dim.extend(net.input_dim[4 * i:4 * i + 4])
        layers = [lp] + list(net.layer)
        del net.layer[:]
        net.layer.extend(layers)
    net.ClearField("input")
    net.ClearField("input_shape")
    net.ClearField("input_dim")
    return True


def _old_bvlc_bn(l) -> bool:
    # caffe-jacinto has no such upgrade (docs/jacinto-spec.md §d.5): a jacinto BatchNorm with scale_bias (its 4th/5th
    # blobs are learnable gamma/beta) is never touched; without scale_bias its 3 blobs are statistics anyway
    return l.type == "BatchNorm" and len(l.param) == 3 and not l.batch_norm_param.scale_bias


def upgrade_batchnorm(net) -> bool:
    """BVLC BatchNorm layers declaring 3 param specs: set their lr_mult/decay_mult to 0, keep the specs."""
    changed = False
    for l in net.layer:
        if _old_bvlc_bn(l):
            for p in l.param:
                p.lr_mult = 0.0
                p.decay_mult = 0.0
            changed = True
    return changed


def net_needs_upgrade(net) -> bool:
    """True when ``net`` uses any legacy form handled by :func:`upgrade_net`."""
    return bool(len(net.layers) or len(net.input) or len(net.input_shape) or len(net.input_dim)
                or any(_old_bvlc_bn(l) for l in net.layer))


def upgrade_net(net, path=None) -> bool:
    """Apply every needed net upgrade in Caffe's order (UpgradeNetAsNeeded); return True if changed."""
    changed = False
    if any(l.HasField("layer") for l in net.layers):
        log.warning("%s: upgrading V0LayerParameter net (V0 is deprecated)", path or "net")
        upgrade_v0_net(net, path)
        changed = True
    if len(net.layers):
        changed |= upgrade_data_transformation(net)
        log.warning("%s: upgrading V1LayerParameter net (V1 is deprecated)", path or "net")
        upgrade_v1_net(net, path)
        changed = True
    if upgrade_net_input(net):
        log.warning("%s: upgrading deprecated 'input' fields to an Input layer", path or "net")
        changed = True
    if upgrade_batchnorm(net):
        log.info("Attempting to upgrade batch norm layers using deprecated params: %s", path or "net")
        changed = True
    return changed


def upgrade_solver(solver, path=None) -> bool:
    """``solver_type`` enum -> ``type`` string (UpgradeSolverAsNeeded); return True if changed."""
    if not solver.HasField("solver_type"):
        return False
    if solver.HasField("type"):
        raise FileFormatError(path, "Failed to upgrade solver: old solver_type field (enum) and new type field "
                                    "(string) cannot be both specified.")
    solver.type = SOLVER_TYPES[solver.solver_type]
    solver.ClearField("solver_type")
    log.warning("%s: upgrading deprecated solver_type to type: %s", path or "solver", solver.type)
    return True
