"""The plan of the int8 engine (:class:`~caffelite.jacinto.int8_engine.Int8Net`): how each layer of a quantized net
runs in integers.

A plan is a list of steps, tuples that start with (kind, first layer, last layer):

- ``("conv", i, last, conv)``: Convolution ``i`` with its merged in-place followers up to ``last`` (§b.3) as one
  integer convolution, ``conv`` a :class:`caffelite.ops.int8.PackedConv` or :class:`~caffelite.ops.int8.AutoConv`;
- ``("pool" | "lut", i, i, table, lo)``: MAX pooling or ReLU on the integers, requantized by a lookup table
  indexed by integer - ``lo``;
- ``("eltwise", i, i, table, grid1, grid2)``: a two-input Eltwise SUM as a 2-D lookup table;
- ``("split", i, i)``, ``("argmax", i, i)``: run on the integers as they are;
- ``("deconv", i, last, spec)``: a depthwise Deconvolution in the compiled glue kernels
  (:class:`caffelite.ops.int8_glue.DeconvSpec`: the float simulation's float32 arithmetic, or int32 sums where
  they are provably the same); ``last = i + 1`` when the following ArgMax is fused into it (its only reader);
- ``("bias", i, i)``: the float Bias on the float input and its quantizer in one compiled pass;
- ``("float", i, i)``: the layer's float forward on the dequantized inputs.

The ``deconv`` and ``bias`` steps are planned only with ``native`` and the glue kernels built; they give the
integers of the ``float`` step they replace, bit for bit.

Plans depend on the quantization parameters of the forward (they are rebuilt when those change), not on the data.
"""

from __future__ import annotations

import numpy as np

from ..ops import int8 as i8op
from ..ops import int8_glue as glue
from ..ops.im2col import ConvGeometry
from .int8_grid import QGrid


def out_grid(net, i, j):
    """The grid of output ``j`` of layer ``i`` where jacinto quantizes it, else None (a float output)."""
    ly = net.layers[i]
    if not ly.param.HasField("quantization_param"):
        return None
    qo = ly.param.quantization_param.qparam_out
    return QGrid.of(qo[j]) if j < len(qo) and qo[j].quantize else None


def plan_steps(net, ties, native=True, sparse=None, auto_times=None, fuse_argmax=True, compiled=None):
    """The steps that run ``net`` in integers, in layer order (see the module docstring for their form).

    ``ties``: the hook's rounding of ties; ``native``/``sparse``: as :class:`~caffelite.jacinto.int8_engine.Int8Net`;
    ``auto_times``: layer name -> the timings of its dense/sparse choice, kept by the caller so that the plans
    of one net share them; ``fuse_argmax``: fuse a Deconvolution with the ArgMax that alone reads it;
    ``compiled``: plan the compiled ``deconv``/``bias`` steps (default: ``native`` and the glue kernels built)."""
    from .. import fusion

    compiled = (native and glue.available()) if compiled is None else (compiled and glue.available())

    auto_times = {} if auto_times is None else auto_times
    chains = fusion.plan(net)
    grids = {}  # blob name -> grid of its integers at this point of the plan
    steps = []
    i = 0
    n = len(net.layers)
    while i < n:
        ly = net.layers[i]
        t = ly.type
        bots, tops = net.bottom_ids(i), net.top_ids(i)
        step = None
        if t == "Convolution":
            ch = chains.get(i)
            members = [] if ch is None else ch.affines + ([ch.relu] if ch.relu is not None else [])
            step = conv_step(net, i, members, grids, ties, native, sparse, auto_times)
        elif t == "Split" and bots[0] in grids:
            step = ("split", i, i)
            for b in tops:
                grids[b] = grids[bots[0]]
        elif t in ("Pooling", "ReLU") and bots[0] in grids and out_grid(net, i, 0) is not None:
            src, dst = grids[bots[0]], out_grid(net, i, 0)
            if t == "Pooling" and ly.param.pooling_param.pool == ly.param.pooling_param.MAX:
                step = ("pool", i, i, dst.lut_from(src, lambda x: x, ties), src.lo)
            elif t == "ReLU":
                slope = np.float32(ly.param.relu_param.negative_slope)
                step = ("lut", i, i, dst.lut_from(src, lambda x, sl=slope: np.where(x > 0, x, x * sl), ties),
                        src.lo)
        elif t == "ArgMax" and bots[0] in grids:
            step = ("argmax", i, i)
        elif (t == "Eltwise" and len(bots) == 2 and all(b in grids for b in bots)
              and ly.param.eltwise_param.operation == 1 and not len(ly.param.eltwise_param.coeff)
              and out_grid(net, i, 0) is not None):
            g1, g2, dst = grids[bots[0]], grids[bots[1]], out_grid(net, i, 0)
            if (g1.hi - g1.lo + 1) * (g2.hi - g2.lo + 1) <= 1 << 17:
                a = g1.dequantize(np.arange(g1.lo, g1.hi + 1))[:, None]
                b = g2.dequantize(np.arange(g2.lo, g2.hi + 1))[None, :]
                step = ("eltwise", i, i, dst.quantize(a + b, ties), g1, g2)
        elif t == "Deconvolution" and compiled and bots[0] in grids \
                and out_grid(net, i, 0) is not None:
            step = deconv_step(net, i, grids[bots[0]], ties, fuse_argmax)
        elif (t == "Bias" and compiled and len(bots) == 1 and bots[0] not in grids
              and out_grid(net, i, 0) is not None):
            step = ("bias", i, i)
        if step is None:
            step = ("float", i, i)
        steps.append(step)
        last = step[2]
        # grids after the step: the last layer's flagged tops are integers; other tops are float
        if step[0] not in ("split",):
            for k in range(i, last + 1):
                for j, b in enumerate(net.top_ids(k)):
                    g = out_grid(net, k, j)
                    if g is not None:
                        grids[b] = g
                    else:
                        grids.pop(b, None)
        i = last + 1
    return steps


def conv_step(net, i, members, grids, ties, native, sparse, auto_times):
    """An integer convolution step for layer ``i`` and its in-place ``members``, or None (float path).

    ``grids``: blob name -> grid of the integers the plan has for it so far; the other arguments as
    :func:`plan_steps`."""
    ly = net.layers[i]
    bname = net.bottom_ids(i)[0] if len(net.bottom_ids(i)) == 1 else None
    if bname is None or bname not in grids or len(net.top_ids(i)) != 1:
        return None
    gin = grids[bname]
    last = members[-1] if members else i
    # only the chain's last output may be quantized (merged outputs, §b.3)
    for k in [i] + members[:-1] if members else []:
        if out_grid(net, k, 0) is not None:
            return None
    gout = out_grid(net, last, 0)
    qp = ly.param.quantization_param if ly.param.HasField("quantization_param") else None
    if gout is None or qp is None or not qp.qparam_w or not qp.qparam_w[0].quantize or gin.off != 0:
        return None
    qw = qp.qparam_w[0]
    if qw.bitwidth > 16:
        return None
    wg = QGrid.of(qw)
    w = ly.blobs[0].data
    wq = wg.quantize(w, "even").astype(np.int32)  # exact: w is on the grid already
    # centre on the integer a float zero weight quantizes to, so pruned weights stay zero (the sparse kernel
    # skips them); the rest of the offset (|zw - off| <= 0.5) goes through the window sums
    zw = int(np.clip(np.rint(np.float64(wg.off)), wg.lo, wg.hi)) if qw.unsigned_quant else 0
    zw_dense = zw
    u8_input = gin.lo >= 0 and gin.hi <= 255
    s8_input = not u8_input and gin.lo >= -128 and gin.hi <= 127  # the sparse quads kernels take x + 128
    qmax = int(max(abs(gin.lo), abs(gin.hi)))
    if u8_input and qw.unsigned_quant and qw.bitwidth <= 8 and not (-128 <= wq.min() - zw and wq.max() - zw <= 127):
        # 8-bit weights centred into int8 for the dense u8 x s8 kernel (there the zeros move; the sparse kernel
        # keeps the centring above, with its own window-sum correction: the same integers either way)
        zw_dense = 2 ** (qw.bitwidth - 1)
    cp = ly.param.convolution_param
    geom = getattr(ly, "geom", None)
    if not isinstance(geom, ConvGeometry) or w.ndim != 4:
        return None
    group = int(cp.group) or 1
    try:
        for z in {zw, zw_dense}:
            i8op.check_bounds(wq - z, qmax, ly.param.name)
    except ValueError:
        return None
    cout = w.shape[0]
    a = np.ones(cout)
    s = np.zeros(cout)
    relu, slope = False, 0.0
    for m in members:
        f = net.layers[m]
        if f.type == "ReLU":
            relu, slope = True, float(np.float32(f.param.relu_param.negative_slope))
            continue
        ab = f.inference_affine(net.bottom_vecs(m))
        if ab is None:
            return None
        fa, fb = (np.asarray(v, np.float64).reshape(-1) for v in ab)
        a, s = a * fa, s * fa + fb
    bias = np.asarray(ly.blobs[1].data, np.float64).reshape(-1) if len(ly.blobs) > 1 and cp.bias_term \
        else np.zeros(cout)
    A = a * gin.inv * wg.inv * gout.st
    C = (a * bias + s) * gout.st
    if relu and slope == 0 and gout.off <= gout.lo:
        relu = False  # the clip to [lo, hi] after adding off already maps every negative value to lo

    def centred(z):
        """(weights, requantisation) centred on zero point ``z``."""
        return (wq - z).astype(np.int16), i8op.Requant(A=A, B=A * (z - wg.off), C=C, lo=gout.lo, hi=gout.hi,
                                                        off=gout.off, relu=relu, slope=slope, ties=ties)

    ws, rqs = centred(zw)  # pruned weights are zeros
    wd, rqd = (ws, rqs) if zw_dense == zw else centred(zw_dense)
    if sparse is None and native and i8op.sparse_worthwhile(ws, group, quads=u8_input or s8_input):
        times = auto_times.setdefault(ly.param.name, {})  # shared by this layer's plans
        return ("conv", i, last, i8op.AutoConv(wd, geom, group, rqd, times=times, u8_input=u8_input,
                                               sparse_w=ws, sparse_rq=rqs, s8_input=s8_input, qmax=qmax))
    if bool(sparse) and i8op.available():
        return ("conv", i, last, i8op.PackedConv(ws, geom, group, rqs, sparse=True, u8_input=u8_input,
                                                 s8_input=s8_input, qmax=qmax))
    return ("conv", i, last, i8op.PackedConv(wd, geom, group, rqd, u8_input=u8_input))



def plain_argmax(ly):
    """Whether ArgMax layer ``ly`` is the top-1 index over axis 1 (what the glue kernels compute)."""
    p = ly.param.argmax_param
    return ly.type == "ArgMax" and p.HasField("axis") and int(p.axis) in (1, -3) and int(p.top_k) == 1 \
        and not p.out_max_val


def deconv_step(net, i, gin, ties, fuse_argmax=True):
    """A compiled step for depthwise Deconvolution ``i`` (no bias, dilation 1) reading integers on grid ``gin``,
    or None (float path). Int32 sums where :func:`caffelite.ops.int8_glue.integer_form` proves them equal to
    the simulation's float32 sums, else the float32 arithmetic of the float path (products rounded to float32,
    summed in its order: kernel taps in row-major order)."""
    from ..ops.depthwise import is_depthwise
    ly = net.layers[i]
    cp = ly.param.convolution_param
    g = getattr(ly, "geom", None)
    tops, bots = net.top_ids(i), net.bottom_ids(i)
    if len(bots) != 1 or len(tops) != 1 or not isinstance(g, ConvGeometry) or (g.dh, g.dw) != (1, 1) \
            or g.kh * g.kw > glue.MAX_TAPS:
        return None
    w = ly.blobs[0].data
    group = int(cp.group) or 1
    if cp.bias_term or w.ndim != 4 or w.dtype != np.float32 or not is_depthwise(w.shape[0], int(cp.num_output),
                                                                                 group):
        return None
    gout = out_grid(net, i, 0)
    q = np.arange(gin.lo, gin.hi + 1)
    tab = gin.dequantize(q)  # the simulation's float32 input values
    wk = np.ascontiguousarray(w.reshape(w.shape[0], g.kh, g.kw))
    exact = glue.integer_form(tab, wk)
    common = dict(qlo=gin.lo, kh=g.kh, kw=g.kw, sh=g.sh, sw=g.sw, ph=g.ph, pw=g.pw, st=gout.st, off=gout.off,
                  lo=float(gout.lo), hi=float(gout.hi), away=ties == "away")
    if exact is not None:
        spec = glue.DeconvSpec(mode="int", tab=exact[0], w=exact[1], scale=exact[2], **common)
    else:
        spec = glue.DeconvSpec(mode="float", tab=np.ascontiguousarray(tab, np.float32), w=wk.copy(), scale=1.0,
                               inv=gin.inv, **common)
    last = i
    if fuse_argmax and i + 1 < len(net.layers):
        nxt = net.layers[i + 1]
        readers = [k for k in range(len(net.layers)) if tops[0] in net.bottom_ids(k)]
        if (readers == [i + 1] and plain_argmax(nxt) and net.bottom_ids(i + 1) == tops
                and tops[0] not in net.outputs and len(net.top_ids(i + 1)) == 1):
            last = i + 1
    return ("deconv", i, last, spec)
