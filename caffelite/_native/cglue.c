/* caffelite._native._cglue: the non-convolution inference layers of a segmentation net for the CPU, an optional
 * compiled helper called through ctypes (caffelite/ops/native_glue.py).
 *
 * Why: on jsegnet21v2 the depthwise upsampling Deconvolutions, MAX pooling and the final ArgMax are memory-bound
 * passes that NumPy runs as many whole-array operations (one per kernel tap or window cell, each through a
 * scratch buffer). Here every output row is produced in one pass while its inputs are in cache.
 *
 * Each kernel repeats, value for value, the float32 operations of its NumPy reference, in the same order, so the
 * results are bitwise the same (the build uses -ffp-contract=off: no fused multiply-adds):
 * - dw_deconv: caffelite/ops/depthwise.py _dw_scatter. Output (y, x) of phase (y % sh, x % sw) sums the products
 *   src * w of the phase's taps, row taps outer and column taps inner, each in increasing kernel index: acc =
 *   p0, then acc = acc + p_t (source cells outside the image read as 0.0 and still count); a phase without taps
 *   is +0. Then + bias[c] when given (ops/conv.py adds the bias after the sum). Only a NaN made from two NaNs or
 *   from inf*0 may differ, in its sign and payload: which operand's NaN x86 returns follows the operand order the
 *   compiler picks for a commutative multiply or add (IEEE 754 leaves it open).
 * - max_pool: caffelite/ops/pool.py max_pool_forward without the argmax. MAX(a, b) is NumPy's maximum: a when a
 *   is NaN or a > b, else b (so equal values give b: the sign of a zero result depends on the order). Tiled
 *   windows (no pad, kernel == stride, the input an exact multiple) reduce the kh rows first, then the kw
 *   columns, as _tiled_max; other windows take the first real cell in row-major order and MAX the others in,
 *   as the general path (its -inf padding cells never change the result, so they are skipped).
 * - argmax: caffelite/layers/reduction.py ArgMax top-1 along an axis: the index of the largest value, ties to the
 *   larger index; when a NaN is present, the largest index holding a NaN (np.argmax on the reversed axis).
 *
 * Layouts (float32, C order): planes of H x W (deconv/pool: N*C planes), ArgMax (outer, n, inner). Tasks are
 * output rows (deconv, pool) or blocks of positions (ArgMax); each output value is computed by one task in a
 * fixed order, so results do not depend on how the task range is split over threads.
 *
 * Instruction sets are chosen at run time: the kernels are compiled once per vector width by including this file
 * into itself with VW / FN / TARGET defined (AVX-512, AVX2, and a portable 4-wide build).
 */
#ifndef CGLUE_KERNELS

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "isa.h"

/* Depthwise deconvolution (mirrored by a ctypes Structure in native_glue.py). The taps of row phase r are entries
 * hstart[r] .. hstart[r+1]-1 of hi[] (kernel row) and ho[] (source row offset: output row r + sh*m reads source
 * row m + offset), in summation order; columns likewise with sw, wstart, wi, wo. */
struct dwp {
    long planes, C;       /* N*C planes; channel of plane p = p % C */
    long Hs, Ws, H, W;    /* source and output size */
    int kh, kw, sh, sw;   /* kernel and stride */
    const int *hstart, *hi, *ho;
    const int *wstart, *wi, *wo;
    const float *zeros;   /* Ws zeros: the source row read for rows outside the image */
};

/* MAX pooling. */
struct poolp {
    long planes, H, W, Ho, Wo;
    int kh, kw, sh, sw, ph, pw;
    int tiled;            /* the windows tile the input: reduce rows first, then columns (see above) */
};

/* ArgMax along the middle axis of (outer, n, inner); tasks are (outer index, block of `block` positions). */
struct argp {
    long outer, n, inner, block;
};

#define CGLUE_KERNELS 1

#define ISA_SELF "cglue.c"
#include "isa_instances.h"

/* Instruction sets this CPU can run (isa.h). */
int cglue_isa_mask(void) { return cpu_isa_mask(); }

int cglue_dw_size(void) { return (int)sizeof(struct dwp); }
int cglue_pool_size(void) { return (int)sizeof(struct poolp); }
int cglue_arg_size(void) { return (int)sizeof(struct argp); }

/* Each kernel returns 0, or -1 when its scratch could not be allocated (ISA_CALL: -2 for a missing build). */

/* Depthwise deconvolution, output rows t0..t1 of the (planes * H) rows: out = sum of the phase taps
 * (+ bias[c] when bias is not NULL). wk is (C, kh*kw). */
int cglue_dw_deconv(int isa, const float *src, const float *wk, const float *bias, float *out, const struct dwp *p,
                    long t0, long t1)
{
    ISA_CALL(isa, dw_deconv, (src, wk, bias, out, p, t0, t1));
}

/* MAX pooling, output rows t0..t1 of the (planes * Ho) rows. */
int cglue_max_pool(int isa, const float *x, float *out, const struct poolp *p, long t0, long t1)
{
    ISA_CALL(isa, max_pool, (x, out, p, t0, t1));
}

/* ArgMax top-1 along the middle axis, tasks t0..t1 of outer * ceil(inner / block); out (outer, inner) receives
 * the indices as floats. */
int cglue_argmax(int isa, const float *x, float *out, const struct argp *p, long t0, long t1)
{
    ISA_CALL(isa, argmax, (x, out, p, t0, t1));
}

/* The module itself is empty: it exists so that setuptools builds and installs the shared library. */
static struct PyModuleDef cglue_module = {PyModuleDef_HEAD_INIT, "_cglue",
                                          "Deconvolution/pooling/ArgMax kernels (ctypes).", -1, NULL};

PyMODINIT_FUNC PyInit__cglue(void) { return PyModule_Create(&cglue_module); }

#else /* CGLUE_KERNELS: one instantiation of the kernels for vector width VW */

typedef float FN(vec) __attribute__((vector_size(VW * 4)));
typedef float FN(uvec) __attribute__((vector_size(VW * 4), aligned(4)));
typedef int FN(ivec) __attribute__((vector_size(VW * 4)));

#define LOAD(p) (*(const FN(uvec) *)(p))
#define STORE(p, v) (*(FN(uvec) *)(p) = (v))
/* s - 0 keeps the sign of a zero (0 + s would turn -0 into +0) */
#define SPLAT(s) ((s) - (FN(vec)){0})

/* NumPy's maximum(a, b): a when a is NaN or a > b, else b */
static inline float FN(max1)(float a, float b) { return (a > b || a != a) ? a : b; }

TARGET static inline FN(vec) FN(maxv)(FN(vec) a, FN(vec) b)
{
    const FN(ivec) m = (a > b) | (a != a);
    return (FN(vec))(((FN(ivec))a & m) | ((FN(ivec))b & ~m));
}

/* ---- depthwise deconvolution ---------------------------------------------------------------------------- */

/* lane interleaves of two vectors a, b: {a0, b0, a1, b1, ...} (low half, then high half) */
#if VW == 4
#define ILO {0, 4, 1, 5}
#define IHI {2, 6, 3, 7}
#define EVEN {0, 2, 4, 6}
#define ODD {1, 3, 5, 7}
#elif VW == 8
#define ILO {0, 8, 1, 9, 2, 10, 3, 11}
#define IHI {4, 12, 5, 13, 6, 14, 7, 15}
#define EVEN {0, 2, 4, 6, 8, 10, 12, 14}
#define ODD {1, 3, 5, 7, 9, 11, 13, 15}
#else
#define ILO {0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23}
#define IHI {8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31}
#define EVEN {0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30}
#define ODD {1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31}
#endif

/* The taps of one column phase of one output row: source row pointers, column offsets and weights, in summation
 * order; ptr[t] = row[t] + off[t] (used only where every tap is inside its row). */
struct FN(phase) {
    int T;
    const float **row, **ptr;
    const int *off;
    const float *wt;
};

/* outputs m .. m+VW-1 of a phase whose taps are all inside their rows there: p0, then acc + p_t */
TARGET static inline FN(vec) FN(phase_vec)(const struct FN(phase) *ph, long m)
{
    if (ph->T == 0) return (FN(vec)){0};
    FN(vec) a = LOAD(ph->ptr[0] + m) * SPLAT(ph->wt[0]);
    for (int t = 1; t < ph->T; t++) a = a + LOAD(ph->ptr[t] + m) * SPLAT(ph->wt[t]);
    return a;
}

/* Outputs [lo, hi) (hi - lo >= VW) of the sw (1 or 2) phases, each with NT taps (a constant once inlined, so the
 * tap pointers and weights stay in registers); the last vector is moved back to end at hi (it recomputes a few
 * outputs, to the same values). */
TARGET static inline __attribute__((always_inline)) void FN(dw_fixed)(float *orow, const struct FN(phase) *phs,
                                                                       int sw, long lo, long hi, const int NT)
{
    const float *q0[4], *q1[4];
    FN(vec) w0[4], w1[4];
    for (int t = 0; t < NT; t++) {
        q0[t] = phs[0].ptr[t];
        w0[t] = SPLAT(phs[0].wt[t]);
        q1[t] = sw == 2 ? phs[1].ptr[t] : q0[t];
        w1[t] = sw == 2 ? SPLAT(phs[1].wt[t]) : w0[t];
    }
    const FN(ivec) il = ILO, ih = IHI;
    for (long m = lo;; m += VW) {
        if (m + VW > hi) m = hi - VW;
        FN(vec) a = LOAD(q0[0] + m) * w0[0];
        for (int t = 1; t < NT; t++) a = a + LOAD(q0[t] + m) * w0[t];
        if (sw == 1) {
            STORE(orow + m, a);
        } else {
            FN(vec) b = LOAD(q1[0] + m) * w1[0];
            for (int t = 1; t < NT; t++) b = b + LOAD(q1[t] + m) * w1[t];
            STORE(orow + 2 * m, __builtin_shuffle(a, b, il));
            STORE(orow + 2 * m + VW, __builtin_shuffle(a, b, ih));
        }
        if (m + VW == hi) break;
    }
}

/* output m of a phase, columns outside [0, Ws) read as 0.0 */
static inline float FN(phase_one)(const struct FN(phase) *ph, long m, long Ws)
{
    float a = 0.0f;
    for (int t = 0; t < ph->T; t++) {
        const long q = m + ph->off[t];
        const float v = (q >= 0 && q < Ws) ? ph->row[t][q] : 0.0f;
        a = t ? a + v * ph->wt[t] : v * ph->wt[t];
    }
    return a;
}

TARGET static int FN(dw_deconv)(const float *src, const float *wk, const float *bias, float *out,
                                const struct dwp *p, long t0, long t1)
{
    const long H = p->H, W = p->W, Hs = p->Hs, Ws = p->Ws;
    const int sh = p->sh, sw = p->sw, kk = p->kh * p->kw;
    int mth = 1, mtw = 1; /* most taps of a row / column phase */
    for (int r = 0; r < sh; r++)
        if (p->hstart[r + 1] - p->hstart[r] > mth) mth = p->hstart[r + 1] - p->hstart[r];
    for (int r = 0; r < sw; r++)
        if (p->wstart[r + 1] - p->wstart[r] > mtw) mtw = p->wstart[r + 1] - p->wstart[r];
    const long tmax = (long)mth * mtw, nt = sw * tmax;
    void *mem = malloc((size_t)nt * (2 * sizeof(float *) + sizeof(int) + sizeof(float))
                       + sw * sizeof(struct FN(phase)));
    if (!mem) return -1;
    struct FN(phase) *phs = (struct FN(phase) *)mem;
    const float **rows = (const float **)(phs + sw), **ptrs = rows + nt;
    int *offs = (int *)(ptrs + nt);
    float *wts = (float *)(offs + nt);
    for (long t = t0; t < t1; t++) {
        const long pl = t / H, y = t % H, c = pl % p->C;
        const int ry = (int)(y % sh);
        const long my = y / sh;
        float *orow = out + t * W;
        const float *wc = wk + c * kk;
        /* the taps of every column phase; [lo, hi): the m where all of them are inside their rows and every
         * phase has its output sw*m + rx */
        long lo = 0, hi = W / sw;
        for (int rx = 0; rx < sw; rx++) {
            struct FN(phase) *ph = phs + rx;
            ph->row = rows + rx * tmax;
            ph->ptr = ptrs + rx * tmax;
            ph->off = offs + rx * tmax;
            ph->wt = wts + rx * tmax;
            int T = 0;
            for (int th = p->hstart[ry]; th < p->hstart[ry + 1]; th++) {
                const long sr = my + p->ho[th];
                const float *r = (sr >= 0 && sr < Hs) ? src + (pl * Hs + sr) * Ws : p->zeros;
                for (int tw = p->wstart[rx]; tw < p->wstart[rx + 1]; tw++) {
                    const int o = p->wo[tw];
                    rows[rx * tmax + T] = r;
                    offs[rx * tmax + T] = o;
                    ptrs[rx * tmax + T] = r + o;
                    wts[rx * tmax + T] = wc[p->hi[th] * p->kw + p->wi[tw]];
                    if (-(long)o > lo) lo = -(long)o;
                    if (Ws - o < hi) hi = Ws - o;
                    T++;
                }
            }
            ph->T = T;
        }
        if (hi < lo) hi = lo;
        /* the columns outside [sw*lo, sw*hi) */
        for (long x = 0; x < W; x++) {
            if (x == sw * lo && hi > lo) x = sw * hi;
            if (x >= W) break;
            orow[x] = FN(phase_one)(phs + x % sw, x / sw, Ws);
        }
        /* vectors over [lo, hi), the last one moved back to end at hi (it recomputes a few outputs, to the
         * same values) */
        long m = lo;
        const int T0 = phs[0].T;
        if (sw <= 2 && hi - lo >= VW && T0 >= 1 && T0 <= 4 && (sw == 1 || phs[1].T == T0)) {
            switch (T0) {
            case 1: FN(dw_fixed)(orow, phs, sw, lo, hi, 1); break;
            case 2: FN(dw_fixed)(orow, phs, sw, lo, hi, 2); break;
            case 3: FN(dw_fixed)(orow, phs, sw, lo, hi, 3); break;
            default: FN(dw_fixed)(orow, phs, sw, lo, hi, 4); break;
            }
            m = hi;
        } else if (sw <= 2 && hi - lo >= VW) {
            const FN(ivec) il = ILO, ih = IHI;
            for (;; m += VW) {
                if (m + VW > hi) m = hi - VW;
                if (sw == 1) {
                    STORE(orow + m, FN(phase_vec)(phs, m));
                } else {
                    const FN(vec) a = FN(phase_vec)(phs, m), b = FN(phase_vec)(phs + 1, m);
                    STORE(orow + 2 * m, __builtin_shuffle(a, b, il));
                    STORE(orow + 2 * m + VW, __builtin_shuffle(a, b, ih));
                }
                if (m + VW == hi) break;
            }
            m = hi;
        } else if (hi - lo >= VW) {
            /* wider strides: each phase's vector, then its lanes to every sw-th output */
            float lanes[VW];
            for (;; m += VW) {
                if (m + VW > hi) m = hi - VW;
                for (int rx = 0; rx < sw; rx++) {
                    STORE(lanes, FN(phase_vec)(phs + rx, m));
                    for (int l = 0; l < VW; l++) orow[sw * (m + l) + rx] = lanes[l];
                }
                if (m + VW == hi) break;
            }
            m = hi;
        }
        for (; m < hi; m++)
            for (int rx = 0; rx < sw; rx++) orow[sw * m + rx] = FN(phase_one)(phs + rx, m, Ws);
        if (bias) {
            const float b = bias[c];
            for (long x = 0; x < W; x++) orow[x] = orow[x] + b;
        }
    }
    free(mem);
    return 0;
}

/* ---- MAX pooling ---------------------------------------------------------------------------------------- */

TARGET static int FN(max_pool)(const float *x, float *out, const struct poolp *p, long t0, long t1)
{
    const long H = p->H, W = p->W, Ho = p->Ho, Wo = p->Wo;
    const int kh = p->kh, kw = p->kw;
    float *mr = NULL;
    if (p->tiled && kh > 1 && !(kh == 2 && kw == 2)) {
        mr = malloc(sizeof(float) * (size_t)(W > 0 ? W : 1));
        if (!mr) return -1;
    }
    for (long t = t0; t < t1; t++) {
        const long pl = t / Ho, yo = t % Ho;
        const float *xp = x + pl * H * W;
        float *o = out + t * Wo;
        if (p->tiled && kh == 2 && kw == 2) {
            /* _tiled_max for 2x2: MAX(MAX(r0[2j], r1[2j]), MAX(r0[2j+1], r1[2j+1])) */
            const float *r0 = xp + (2 * yo) * W, *r1 = r0 + W;
            long j = 0;
            for (; j + VW <= Wo; j += VW) {
                const FN(vec) m0 = FN(maxv)(LOAD(r0 + 2 * j), LOAD(r1 + 2 * j));
                const FN(vec) m1 = FN(maxv)(LOAD(r0 + 2 * j + VW), LOAD(r1 + 2 * j + VW));
                const FN(ivec) ev = EVEN, od = ODD;
                STORE(o + j, FN(maxv)(__builtin_shuffle(m0, m1, ev), __builtin_shuffle(m0, m1, od)));
            }
            for (; j < Wo; j++)
                o[j] = FN(max1)(FN(max1)(r0[2 * j], r1[2 * j]), FN(max1)(r0[2 * j + 1], r1[2 * j + 1]));
        } else if (p->tiled) {
            /* _tiled_max: the kh rows first (MAX(r0, r1), then MAX(m, ri)), then the kw columns likewise */
            const float *r0 = xp + yo * kh * W;
            const float *m = r0;
            if (kh > 1) {
                const float *r1 = r0 + W;
                long i = 0;
                for (; i + VW <= W; i += VW) STORE(mr + i, FN(maxv)(LOAD(r0 + i), LOAD(r1 + i)));
                for (; i < W; i++) mr[i] = FN(max1)(r0[i], r1[i]);
                for (int r = 2; r < kh; r++) {
                    const float *rr = r0 + r * W;
                    for (i = 0; i + VW <= W; i += VW) STORE(mr + i, FN(maxv)(LOAD(mr + i), LOAD(rr + i)));
                    for (; i < W; i++) mr[i] = FN(max1)(mr[i], rr[i]);
                }
                m = mr;
            }
            if (kw == 1) {
                memcpy(o, m, sizeof(float) * (size_t)Wo);
            } else {
                for (long j = 0; j < Wo; j++) {
                    const float *c = m + j * kw;
                    float v = FN(max1)(c[0], c[1]);
                    for (int q = 2; q < kw; q++) v = FN(max1)(v, c[q]);
                    o[j] = v;
                }
            }
        } else {
            /* the general path: the first real cell of the clipped window, then MAX in row-major order */
            long hs = yo * p->sh - p->ph, he = hs + kh;
            if (hs < 0) hs = 0;
            if (he > H) he = H;
            for (long j = 0; j < Wo; j++) {
                long ws = j * p->sw - p->pw, we = ws + kw;
                if (ws < 0) ws = 0;
                if (we > W) we = W;
                if (hs >= he || ws >= we) {
                    o[j] = -INFINITY;
                    continue;
                }
                float v = xp[hs * W + ws];
                for (long r = hs; r < he; r++) {
                    const float *row = xp + r * W;
                    for (long q = (r == hs ? ws + 1 : ws); q < we; q++) v = FN(max1)(v, row[q]);
                }
                o[j] = v;
            }
        }
    }
    free(mr);
    return 0;
}

/* ---- ArgMax --------------------------------------------------------------------------------------------- */

/* ties to the larger index (v >= best), and a NaN always takes over (v != v): the last NaN wins */
TARGET static int FN(argmax)(const float *x, float *out, const struct argp *p, long t0, long t1)
{
    const long n = p->n, inner = p->inner, blk = p->block, nb = (inner + blk - 1) / blk;
    for (long t = t0; t < t1; t++) {
        const long o = t / nb, i0 = (t % nb) * blk, i1 = i0 + blk < inner ? i0 + blk : inner;
        const float *base = x + o * n * inner;
        float *dst = out + o * inner;
        long i = i0;
        for (; i + VW <= i1; i += VW) {
            FN(vec) best = LOAD(base + i), idx = SPLAT(0.0f);
            for (long k = 1; k < n; k++) {
                const FN(vec) v = LOAD(base + k * inner + i);
                const FN(ivec) take = (v >= best) | (v != v);
                best = (FN(vec))(((FN(ivec))v & take) | ((FN(ivec))best & ~take));
                idx = (FN(vec))(((FN(ivec))SPLAT((float)k) & take) | ((FN(ivec))idx & ~take));
            }
            STORE(dst + i, idx);
        }
        for (; i < i1; i++) {
            float best = base[i];
            long bi = 0;
            for (long k = 1; k < n; k++) {
                const float v = base[k * inner + i];
                if (v >= best || v != v) {
                    best = v;
                    bi = k;
                }
            }
            dst[i] = (float)bi;
        }
    }
    return 0;
}

#undef LOAD
#undef STORE
#undef SPLAT
#undef ILO
#undef IHI
#undef EVEN
#undef ODD

#endif /* CGLUE_KERNELS */
