"""BatchNorm batch statistics as one CUDA kernel, run by :mod:`caffelite.ops.batch_norm` on CuPy arrays; the
reference is :func:`caffelite.ops.batch_norm.batch_stats` (the two-pass formula).

For x viewed as (N, C, S) (S = H·W), per channel: ``mean = Σx / m`` and the biased ``var = Σ(x − mean)² / m``
with ``m = N·S`` (docs/jacinto-spec.md §d.3). One thread block per channel makes
both passes over the channel's N·S values, accumulating in float64 (so the result is at least as exact as
the float32 pairwise sums of the generic body), and reduces in shared memory. The generic body costs
several full-size temporaries and launches per layer on CuPy; this is two reads of x.
"""

from __future__ import annotations

import numpy as np

from ..backend import cupy_module
from . import kernel

__all__ = ["channel_stats", "BN_STATS_SRC"]

_THREADS = 256

#: ``{T}`` is the element type (float / double)
BN_STATS_SRC = """
extern "C" __global__ void bn_stats_{T}(const {T}* x, {T}* mean, {T}* var, const int N, const int C,
                                        const long long S) {
    __shared__ double red[256];
    const int c = blockIdx.x;
    const long long m = (long long)N * S;
    double acc = 0.0;
    for (long long k = threadIdx.x; k < m; k += blockDim.x) {
        const long long n = k / S, s = k - n * S;
        acc += (double)x[(n * C + c) * S + s];
    }
    red[threadIdx.x] = acc;
    __syncthreads();
    for (int half = blockDim.x / 2; half > 0; half >>= 1) {
        if (threadIdx.x < half) red[threadIdx.x] += red[threadIdx.x + half];
        __syncthreads();
    }
    const double mu = red[0] / (double)m;
    __syncthreads();
    acc = 0.0;
    for (long long k = threadIdx.x; k < m; k += blockDim.x) {
        const long long n = k / S, s = k - n * S;
        const double d = (double)x[(n * C + c) * S + s] - mu;
        acc += d * d;
    }
    red[threadIdx.x] = acc;
    __syncthreads();
    for (int half = blockDim.x / 2; half > 0; half >>= 1) {
        if (threadIdx.x < half) red[threadIdx.x] += red[threadIdx.x + half];
        __syncthreads();
    }
    if (threadIdx.x == 0) {
        mean[c] = ({T})mu;
        var[c] = ({T})(red[0] / (double)m);
    }
}
"""

_TYPES = {np.dtype(np.float32): "float", np.dtype(np.float64): "double"}


def channel_stats(x3):
    """``(mean, var)`` per channel of the CuPy ``x3`` (N, C, S): the mean and the biased (two-pass) variance."""
    cp = cupy_module()
    t = _TYPES.get(np.dtype(x3.dtype))
    if t is None:
        raise TypeError(f"bn_stats: unsupported dtype {x3.dtype}")
    x3 = cp.ascontiguousarray(x3)
    n, c, s = x3.shape
    mean = cp.empty(c, dtype=x3.dtype)
    var = cp.empty(c, dtype=x3.dtype)
    kern = kernel("bn_stats", "raw", BN_STATS_SRC.replace("{T}", t), f"bn_stats_{t}", key=t)
    kern((c,), (_THREADS,), (x3, mean, var, np.int32(n), np.int32(c), np.int64(s)))
    return mean, var
