"""caffelite.ops: im2col/col2im against direct definitions, adjointness, and conv kernels against each other."""

import numpy as np
import pytest

from caffelite.ops import ConvGeometry, col2im, im2col
from caffelite.ops import conv as K

GEOMS = [ConvGeometry(3, 3, 1, 1, 1, 1), ConvGeometry(3, 2, 2, 1, 1, 0), ConvGeometry(3, 3, 1, 1, 4, 4, 4, 4),
         ConvGeometry(5, 5, 2, 2, 2, 2), ConvGeometry(1, 1), ConvGeometry(4, 4, 2, 2, 1, 1)]


def direct_im2col(x, g):
    n, c, h, w = x.shape
    ho, wo = g.out_shape(h, w)
    out = np.zeros((n, c, g.kh, g.kw, ho, wo), x.dtype)
    for i in range(g.kh):
        for j in range(g.kw):
            for y in range(ho):
                for xx in range(wo):
                    r, q = y * g.sh - g.ph + i * g.dh, xx * g.sw - g.pw + j * g.dw
                    if 0 <= r < h and 0 <= q < w:
                        out[:, :, i, j, y, xx] = x[:, :, r, q]
    return out


@pytest.mark.parametrize("g", GEOMS)
def test_im2col_matches_definition_and_col2im_is_adjoint(g):
    rs = np.random.default_rng(0)
    x = rs.standard_normal((2, 3, 9, 10))
    cols = im2col(x, g).copy()
    np.testing.assert_array_equal(cols, direct_im2col(x, g))
    c = rs.standard_normal(cols.shape)
    back = col2im(c, g, 9, 10)
    # <im2col(x), c> == <x, col2im(c)>
    np.testing.assert_allclose((cols * c).sum(), (x * back).sum(), rtol=1e-10)


def test_col2im_accumulate():
    g = ConvGeometry(3, 3, 1, 1, 1, 1)
    c = np.ones((1, 1, 3, 3, 4, 4))
    out = np.ones((1, 1, 4, 4))
    col2im(c, g, 4, 4, out=out, accumulate=True)
    assert out[0, 0, 0, 0] == 1 + 4 and out[0, 0, 1, 1] == 1 + 9


@pytest.mark.parametrize("group,g,hw", [
    (1, ConvGeometry(3, 3, 2, 2, 1, 1, 1, 1), (7, 9)), (2, ConvGeometry(3, 3, 2, 2, 1, 1, 1, 1), (7, 9)),
    (4, ConvGeometry(3, 3, 2, 2, 1, 1, 1, 1), (7, 9)), (4, ConvGeometry(4, 4, 2, 2, 1, 1, 1, 1), (8, 10)),
    (4, ConvGeometry(3, 2, 3, 2, 2, 1, 2, 1), (10, 8)), (1, ConvGeometry(3, 2, 3, 2, 2, 1, 2, 1), (10, 8))])
def test_deconv_is_the_adjoint_of_conv(group, g, hw):
    """<conv(x; w), y> == <x, deconv(y; w)> for the same weights: checks both kernels and depthwise paths."""
    rs = np.random.default_rng(1)
    c = 4
    assert all((s + 2 * p - d * (k - 1) - 1) % st == 0 for s, p, d, k, st in
               [(hw[0], g.ph, g.dh, g.kh, g.sh), (hw[1], g.pw, g.dw, g.kw, g.sw)])  # deconv is the exact adjoint
    x = rs.standard_normal((2, c) + hw)
    w = rs.standard_normal((c, c // group, g.kh, g.kw))
    ho, wo = g.out_shape(*hw)
    y = np.zeros((2, c, ho, wo))
    K.conv_forward(x, w, None, g, group, y)
    d = rs.standard_normal(y.shape)
    hd, wd = g.deconv_out_shape(ho, wo)
    z = np.zeros((2, c, hd, wd))
    K.deconv_forward(d, w, None, g, group, z)
    assert z.shape == x.shape
    np.testing.assert_allclose((y * d).sum(), (x * z).sum(), rtol=1e-10)

