"""Grouped 2-D convolution and deconvolution as batched GEMMs, written once against ``xp``.

Layouts are Caffe's (NCHW; convolution weights (Cout, Cin/G, kh, kw); deconvolution weights
(Cin, Cout/G, kh, kw)). All groups and all images go through one ``xp.matmul`` on (N, G, M, K) arrays
instead of a Python loop per group. The column matrix is built a few output rows at a time
(:data:`CHUNK_BYTES`, one strided-view copy per chunk) so it stays in cache for the GEMM that reads it; the
GEMM writes straight into the top. A 1x1/stride-1/pad-0 kernel skips im2col (the input already is the column
matrix). Depthwise kernels (one input and one output channel per group, e.g. jsegnet's bilinear upsampling)
skip the GEMM: kh*kw weighted shifted slices, and the transposed form is computed phase by phase. The data
gradient of a stride-1 convolution is computed as a forward correlation with the flipped kernel (~12% faster
than col2im's read-modify-write passes); other strides use chunked col2im.

When the optional compiled kernels are built (:mod:`caffelite.ops.native`) and the arrays are float32 NumPy,
the forward of every non-1x1, non-depthwise convolution, the stride-1 data gradient and the weight gradient of
kernels 1, 3 or 5 wide go to direct kernels instead: on jsegnet21v2's grouped 3x3 layers (8-32 channels per
group) the GEMMs have 8-32 rows and run far below BLAS peak, and the column matrix is 9x the input. The
GEMM path below stays the reference (float64, CuPy, other shapes, and ``native.enabled(False)``).

Measured on the 2-core CPU without the kernels: the GEMMs are ~90% of the convolution time; a Winograd
F(2x2,3x3) variant and a "flat shift" im2col were tried and lost to this path, so they are not kept.

Scratch buffers come from :func:`caffelite.ops.im2col.workspace` (shared, not thread-safe: one net computes
at a time per process).

Backward functions assign ``dx`` and ACCUMULATE into ``dw`` / ``db`` (Caffe's contract); pass ``None``
for a gradient that is not wanted.
"""

from __future__ import annotations

from ..backend import get_array_module
from . import native
from .depthwise import _dw_correlate, _dw_scatter, _dw_weight_grad
from .depthwise import is_depthwise as _is_depthwise
from .im2col import ConvGeometry, pad_into, window_view, workspace


def _add_bias(out, b):
    if b is not None:
        out += b.reshape(1, -1, 1, 1)


def _bias_grad(dy, db):
    if db is not None:
        db += dy.sum(axis=(0, 2, 3))


# -- chunked GEMM paths ---------------------------------------------------------------------------
#: bytes of column matrix built at a time: a few MB keeps the columns in cache between the copy that
#: builds them and the GEMM that reads them (one huge im2col matrix would go through main memory twice).
#: 4-8 MB measured best on an idle 2-core machine; larger chunks mean fewer GEMM calls, which matters when
#: other processes compete for the cores (each multi-threaded GEMM call is a fork/join of OpenBLAS threads).
CHUNK_BYTES = 8 << 20


def _pointwise_weight_grad(xp, a, b, dw):
    """1x1 weight gradient: ``dw += sum over the batch of a @ bᵀ`` (a, b: (N, G, ·, L) matrices)."""
    gw = xp.matmul(a, b.transpose(0, 1, 3, 2))
    dw += (gw.sum(axis=0) if a.shape[0] > 1 else gw[0]).reshape(dw.shape)


def _row_chunks(ho: int, row_bytes: int):
    rows = max(1, min(ho, CHUNK_BYTES // max(row_bytes, 1)))
    return [(y0, min(ho, y0 + rows)) for y0 in range(0, ho, rows)]


def _col2im_rows_add(buf, dcols, g: ConvGeometry, y0: int):
    """Add column chunk dcols (C, kh, kw, r, Wo) (output rows y0..y0+r) into a padded image buf (C, Hb, Wb)."""
    r, wo = dcols.shape[3:]
    ey, ex = g.sh * (r - 1) + 1, g.sw * (wo - 1) + 1
    for i in range(g.kh):
        ys = y0 * g.sh + i * g.dh
        for j in range(g.kw):
            xs = j * g.dw
            buf[:, ys:ys + ey:g.sh, xs:xs + ex:g.sw] += dcols[:, i, j]


def _gemm_backward(xp, view, dym, wm, g, ho, wo, want_dw, dx_buf):
    """Shared by conv backward (view = windows of x, dym = dy) and deconv forward/backward.

    For image rows chunk by chunk: dW_acc += dym_chunk @ cols_chunk^T; dx_buf (padded) += col2im(W^T dym_chunk).
    ``view`` is (C, kh, kw, ho, wo) for one image, ``dym`` (G, Mg, ho*wo). Returns dW (G, Mg, Kg) or None.
    """
    group, mg, kg = wm.shape
    c = group * kg // (g.kh * g.kw)
    gw = None
    for y0, y1 in _row_chunks(ho, c * g.kh * g.kw * wo * dym.itemsize):
        sl = slice(y0 * wo, y1 * wo)
        if want_dw:
            cols = workspace("cols", (c, g.kh, g.kw, y1 - y0, wo), dym.dtype, xp)
            cols[...] = view[:, :, :, y0:y1]
            part = xp.matmul(dym[:, :, sl], cols.reshape(group, kg, -1).transpose(0, 2, 1))
            gw = part if gw is None else gw + part
        if dx_buf is not None:
            dcols = workspace("dcols", (group, kg, (y1 - y0) * wo), dym.dtype, xp)
            xp.matmul(wm.transpose(0, 2, 1), dym[:, :, sl], out=dcols)
            _col2im_rows_add(dx_buf, dcols.reshape(c, g.kh, g.kw, y1 - y0, wo), g, y0)
    return gw


def _gemm_forward(xp, view, wm, g, ho, wo, out):
    """out (G, Mg, ho*wo) = wm (G, Mg, Kg) @ columns of ``view`` (C, kh, kw, ho, wo), chunk by chunk."""
    c = view.shape[0]
    group, mg, kg = wm.shape
    for y0, y1 in _row_chunks(ho, c * g.kh * g.kw * wo * out.itemsize):
        cols = workspace("cols", (c, g.kh, g.kw, y1 - y0, wo), out.dtype, xp)
        cols[...] = view[:, :, :, y0:y1]
        xp.matmul(wm, cols.reshape(group, kg, -1), out=out[:, :, y0 * wo:y1 * wo])


def _padded_view(x, g, ho, wo):
    h, w = x.shape[2:]
    hb, wb = g.padded_extent(h, w, ho, wo)
    return window_view(pad_into(x, g.ph, g.pw, hb, wb), g, ho, wo)


def _zero_padded_buf(x_like, c, h, w, g, ho, wo, xp):
    hb, wb = g.padded_extent(h, w, ho, wo)
    buf = workspace("col2im", (c, hb, wb), x_like.dtype, xp)
    buf[...] = 0
    return buf


# -- convolution -----------------------------------------------------------------------------------
def conv_forward(x, w, b, g: ConvGeometry, group: int, out):
    """Convolution forward into ``out`` (N, Cout, Ho, Wo); ``b`` (Cout,) or None."""
    xp = get_array_module(x)
    n, cin, h, wd = x.shape
    cout = w.shape[0]
    ho, wo = out.shape[2:]
    if _is_depthwise(cin, cout, group):
        _dw_correlate(x, w.reshape(cout, g.kh, g.kw), g, ho, wo, out)
    else:
        mg, kg = cout // group, (cin // group) * g.kh * g.kw
        wm = w.reshape(group, mg, kg)
        if g.is_pointwise:
            xp.matmul(wm, x.reshape(n, group, kg, ho * wo), out=out.reshape(n, group, mg, ho * wo))
        elif _native_ok(g, wo, x, w, out):
            return native.conv_forward(x, w, b, g, group, out)
        else:
            view = _padded_view(x, g, ho, wo)
            for i in range(n):
                _gemm_forward(xp, view[i], wm, g, ho, wo, out[i].reshape(group, mg, ho * wo))
    _add_bias(out, b)
    return out


def conv_forward_exact(x, w, b, g: ConvGeometry, group: int, out):
    """:func:`conv_forward` whose sums are exact for fixed-point operands, rounded once into ``out``; then the
    bias is added in ``out``'s precision, as :func:`conv_forward` adds it after the sums.

    Products and sums run in float64. A product of two float32 values is exact there, and so is every partial
    sum while the values share a power-of-two grid and stay below 2**53 of its steps. That holds for inputs
    and weights quantized to power-of-two fixed point (8-bit activations and 16-bit weights summed over
    millions of taps). The result then does not depend on the summation order (the kernel, BLAS build or
    thread count): every such implementation gives the correctly rounded sum."""
    xp = get_array_module(x)
    acc = workspace("exact_sums", out.shape, xp.float64, xp)
    conv_forward(x.astype(xp.float64), w.astype(xp.float64), None, g, group, acc)
    out[...] = acc
    _add_bias(out, b)
    return out


def conv_backward(x, w, dy, g: ConvGeometry, group: int, dx=None, dw=None, db=None):
    """Convolution backward: assign ``dx`` (shape of x), accumulate ``dw`` (shape of w) and ``db``."""
    xp = get_array_module(x)
    n, cin, h, wd = x.shape
    cout = w.shape[0]
    ho, wo = dy.shape[2:]
    _bias_grad(dy, db)
    if _is_depthwise(cin, cout, group):
        if dw is not None:
            _dw_weight_grad(x, dy, g, dw.reshape(cout, g.kh, g.kw))
        if dx is not None:
            _dw_scatter(dy, w.reshape(cout, g.kh, g.kw), g, h, wd, dx)
        return
    mg, kg, L = cout // group, (cin // group) * g.kh * g.kw, ho * wo
    dym = dy.reshape(n, group, mg, L)
    wm = w.reshape(group, mg, kg)
    if g.is_pointwise:
        xm = x.reshape(n, group, kg, L)
        if dw is not None:
            _pointwise_weight_grad(xp, dym, xm, dw)
        if dx is not None:
            xp.matmul(wm.transpose(0, 2, 1), dym, out=dx.reshape(n, group, kg, L))
        return
    if dw is not None and _native_ok(g, wo, x, dy, dw) and native.weight_grad_supported(g, wo):
        native.conv_weight_grad(x, dy, g, group, dw)
        dw = None
    corr = dx is not None and DX_BY_CORRELATION and _dx_correlation_ok(g)
    if corr:
        # stride 1: dx is the correlation of dy with the flipped, channel-transposed kernel padded by
        # d(k-1) - p, i.e. a forward convolution (no col2im read-modify-write passes)
        cg = cin // group
        g2 = ConvGeometry(g.kh, g.kw, 1, 1, g.dh * (g.kh - 1) - g.ph, g.dw * (g.kw - 1) - g.pw, g.dh, g.dw)
        wf = w.reshape(group, mg, cg, g.kh, g.kw).transpose(0, 2, 1, 3, 4)[:, :, :, ::-1, ::-1]
        if _native_ok(g, wd, dy, w, dx):
            native.conv_forward(dy, wf.reshape(cin, mg, g.kh, g.kw), None, g2, group, dx)
            dx, corr = None, False
    if dw is None and dx is None:
        return
    view = _padded_view(x, g, ho, wo) if dw is not None else None
    if corr:
        wf = xp.ascontiguousarray(wf).reshape(group, cg, mg * g.kh * g.kw)
        hb, wb = g2.padded_extent(ho, wo, h, wd)
        dview = window_view(pad_into(dy, g2.ph, g2.pw, hb, wb, slot="pad_dy"), g2, h, wd)
    for i in range(n):
        buf = _zero_padded_buf(dy, cin, h, wd, g, ho, wo, xp) if dx is not None and not corr else None
        if dw is not None or buf is not None:
            gw = _gemm_backward(xp, None if view is None else view[i], dym[i], wm, g, ho, wo, dw is not None, buf)
            if gw is not None:
                dw += gw.reshape(w.shape)
        if buf is not None:
            dx[i] = buf[:, g.ph:g.ph + h, g.pw:g.pw + wd]
        if corr:
            _gemm_forward(xp, dview[i], wf, g2, h, wd, dx[i].reshape(group, cg, h * wd))


def conv_forward_epilogue(x, w, b, g: ConvGeometry, group: int, out, scale, shift, relu_slope) -> bool:
    """Convolution forward with a per-channel ``* scale + shift`` and/or (leaky) ReLU applied as the outputs are
    stored (inference fusion, :mod:`caffelite.fusion`). Only the compiled kernel does this: returns False, with
    nothing computed, when it cannot take the call."""
    if _is_depthwise(x.shape[1], w.shape[0], group) or not _native_ok(g, out.shape[3], x, w, out):
        return False
    native.conv_forward(x, w, b, g, group, out, scale=scale, shift=shift, relu_slope=relu_slope)
    return True


def _native_ok(g: ConvGeometry, out_width: int, *arrays) -> bool:
    """Whether the compiled direct kernels take this call (float32 NumPy, contiguous outputs, output rows at
    least one vector wide)."""
    return native.usable(*arrays) and native.supports(g, out_width) and arrays[-1].flags.c_contiguous


#: compute stride-1 data gradients as a correlation (see conv_backward); a switch for benchmarking
DX_BY_CORRELATION = True


def _dx_correlation_ok(g: ConvGeometry) -> bool:
    return g.sh == 1 and g.sw == 1 and g.ph <= g.dh * (g.kh - 1) and g.pw <= g.dw * (g.kw - 1)


# -- deconvolution ---------------------------------------------------------------------------------
def deconv_forward(x, w, b, g: ConvGeometry, group: int, out):
    """Deconvolution (transposed convolution) forward into ``out`` (N, Cout, Ho, Wo)."""
    xp = get_array_module(x)
    n, cin, h, wd = x.shape
    cout, ho, wo = out.shape[1:]
    if _is_depthwise(cin, cout, group):
        _dw_scatter(x, w.reshape(cin, g.kh, g.kw), g, ho, wo, out)
    else:
        cg, kg, L = cin // group, (cout // group) * g.kh * g.kw, h * wd
        # the deconvolution forward is the convolution's data backward with the roles of W's axes swapped
        wm = w.reshape(group, cg, kg)
        xm = x.reshape(n, group, cg, L)
        if g.is_pointwise:
            xp.matmul(wm.transpose(0, 2, 1), xm, out=out.reshape(n, group, kg, L))
        else:
            for i in range(n):
                buf = _zero_padded_buf(x, cout, ho, wo, g, h, wd, xp)
                _gemm_backward(xp, None, xm[i], wm, g, h, wd, False, buf)
                out[i] = buf[:, g.ph:g.ph + ho, g.pw:g.pw + wo]
    _add_bias(out, b)
    return out


def deconv_backward(x, w, dy, g: ConvGeometry, group: int, dx=None, dw=None, db=None):
    """Deconvolution backward: assign ``dx``, accumulate ``dw`` (Cin, Cout/G, kh, kw) and ``db``."""
    xp = get_array_module(x)
    n, cin, h, wd = x.shape
    cout, ho, wo = dy.shape[1:]
    _bias_grad(dy, db)
    if _is_depthwise(cin, cout, group):
        if dw is not None:
            _dw_weight_grad(dy, x, g, dw.reshape(cin, g.kh, g.kw))
        if dx is not None:
            _dw_correlate(dy, w.reshape(cin, g.kh, g.kw), g, h, wd, dx)
        return
    cg, kg, L = cin // group, (cout // group) * g.kh * g.kw, h * wd
    wm = w.reshape(group, cg, kg)
    xm = x.reshape(n, group, cg, L)
    if g.is_pointwise:
        dcols = dy.reshape(n, group, kg, L)
        if dw is not None:
            _pointwise_weight_grad(xp, xm, dcols, dw)
        if dx is not None:
            xp.matmul(wm, dcols, out=dx.reshape(n, group, cg, L))
        return
    # dx = conv(dy; W) and dW = x * columns(dy)^T: the convolution forward / weight-gradient structure
    view = _padded_view(dy, g, h, wd)
    for i in range(n):
        if dx is not None:
            _gemm_forward(xp, view[i], wm, g, h, wd, dx[i].reshape(group, cg, L))
        if dw is not None:
            gw = _gemm_backward(xp, view[i], xm[i], wm, g, h, wd, True, None)
            dw += gw.reshape(w.shape)
