"""Bad-input checks for the jacinto options: one clear error each, raised before any work is done."""

from __future__ import annotations

from ..errors import NetError, SolverError

#: layer types whose Forward quantizes in caffe-jacinto 0.17 (§b.3), plus data layers (checked by name)
QUANTIZABLE_TYPES = ("Convolution", "InnerProduct", "Deconvolution", "BatchNorm", "Scale", "ReLU", "PReLU",
                     "Eltwise", "Concat", "Bias", "Pooling")


def check_sparsity_param(p):
    """Validate the sparsity fields of a SolverParameter (§a.1); SolverError naming the field."""
    if p.sparse_mode not in (0, 1):
        raise SolverError(f"sparse_mode: unknown value {p.sparse_mode} (SPARSE_NONE=0, SPARSE_UPDATE=1)")
    t = p.sparsity_target
    if not (0.0 <= t < 1.0):
        raise SolverError(f"sparsity_target: {t:g} is outside [0, 1)")
    if p.sparsity_step_factor < 0:
        raise SolverError(f"sparsity_step_factor: must not be negative (got {p.sparsity_step_factor:g})")
    if p.sparsity_step_iter <= 0 and p.sparse_mode and t > 0:
        raise SolverError(f"sparsity_step_iter: must be positive (got {p.sparsity_step_iter})")
    if p.sparsity_step_iter < 0:
        raise SolverError(f"sparsity_step_iter: must not be negative (got {p.sparsity_step_iter})")
    if p.sparsity_start_iter < 0:
        raise SolverError(f"sparsity_start_iter: must not be negative (got {p.sparsity_start_iter})")
    if not (0.0 <= p.sparsity_start_factor <= 1.0):
        raise SolverError(f"sparsity_start_factor: {p.sparsity_start_factor:g} is outside [0, 1]")
    for name in ("sparsity_threshold_maxratio", "sparsity_threshold_value_max"):
        if getattr(p, name) < 0:
            raise SolverError(f"{name}: must not be negative (got {getattr(p, name):g})")
    if p.display_sparsity < 0:
        raise SolverError(f"display_sparsity: must not be negative (got {p.display_sparsity})")


def _check_bits(value, field, layer=None, layer_type=None):
    if not (2 <= int(value) <= 32):
        msg = f"{field}: bitwidth {value} is outside 2..32"
        if layer is None:
            raise NetError("net_quantization_param." + msg)
        raise NetError("quantization_param." + msg, layer, layer_type)


def is_quantizable_type(type_name):
    """Whether a layer type can carry a quantization_param (§b.3: the quantizing types and data layers)."""
    return type_name in QUANTIZABLE_TYPES or "data" in type_name.lower()


def check_quantization(net_param):
    """Validate ``quantize`` / ``net_quantization_param`` and every layer's ``quantization_param`` (§b.1).

    Bitwidths must be within 2..32, range factors sensible, and a quantization_param may only switch on
    quantization on a layer type that quantizes (jacinto would silently ignore it).
    """
    if net_param.HasField("net_quantization_param") or net_param.quantize:
        q = net_param.net_quantization_param
        for f in ("bitwidth_weights", "bitwidth_activations", "bitwidth_bias"):
            _check_bits(getattr(q, f), f)
        if q.quantization_start < 0:
            raise NetError(f"net_quantization_param.quantization_start: must not be negative "
                           f"(got {q.quantization_start})")
        if not (0.0 <= q.range_update_factor <= 1.0):
            raise NetError(f"net_quantization_param.range_update_factor: {q.range_update_factor:g} "
                           f"is outside [0, 1]")
        if q.range_expansion_factor <= 0:
            raise NetError(f"net_quantization_param.range_expansion_factor: must be positive "
                           f"(got {q.range_expansion_factor:g})")
        if q.rounding_scheme not in (0, 1):
            raise NetError(f"net_quantization_param.rounding_scheme: unknown value {q.rounding_scheme}")
    for lp in net_param.layer:
        if not lp.HasField("quantization_param"):
            continue
        qp = lp.quantization_param
        groups = (qp.qparam_in, qp.qparam_w, qp.qparam_out)
        # jacinto writes a quantization_param on every layer of a quantized net, with flags only on the types
        # that quantize: only a flag on another type is an error
        if not is_quantizable_type(lp.type) and any(q.quantize for g in groups for q in g):
            raise NetError(f"quantization_param is not allowed on a {lp.type} layer (quantizable types: "
                           f"{', '.join(QUANTIZABLE_TYPES)} and data layers)", lp.name, lp.type)
        for name, group in zip(("qparam_in", "qparam_w", "qparam_out"), groups, strict=True):
            for j, qq in enumerate(group):
                if qq.HasField("bitwidth"):
                    _check_bits(qq.bitwidth, f"{name}[{j}].bitwidth", lp.name, lp.type)
