/* caffelite._native._cbn: BatchNorm (TRAIN, batch statistics) and ReLU kernels for the CPU, an optional
 * compiled helper called through ctypes (caffelite/ops/native_bn.py).
 *
 * Why: NumPy needs one whole-array pass per operation (x - mu, its square, the sum, the scaling...), so a
 * BatchNorm forward + backward streams the activations ~15 times through memory. Here one task handles one
 * channel: its values (N rows of H*W) are summed, normalised and written while they are still in the core's
 * cache, with every sum accumulated in float64.
 *
 * Layouts (float32, C order): x, y, xhat, dy, dx are (N, C, S), S = H*W; per-channel vectors are (C,).
 * Tasks: BatchNorm = channels, ReLU = elements. Each output value is computed by one task in a fixed order, so
 * results do not depend on how the task range is split over threads. The NumPy code in
 * caffelite/layers/batch_norm.py and neuron.py stays the reference; tests compare the two.
 *
 * Instruction sets are chosen at run time: the kernels below are compiled once per vector width by including
 * this file into itself with VW / FN / TARGET defined (AVX-512, AVX2+FMA, and a portable 4-wide build).
 */
#ifndef CBN_KERNELS

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>

#include "isa.h"

/* Parameters of one BatchNorm call (mirrored by a ctypes Structure in native_bn.py). */
struct bnp {
    long N, C, S;   /* images, channels, values per image and channel */
    double eps;     /* added to the variance */
    int keep;       /* forward: write xhat */
    int affine;     /* forward: y = xhat*gamma + beta (else y = xhat) */
    int onepass;    /* forward: one pass for sum and sum of squares (shifted by the channel's first value) */
    int want_dx;    /* backward: write dx (else only the parameter sums) */
};

#define CBN_KERNELS 1

#define ISA_SELF "cbn.c"
#include "isa_instances.h"

/* Instruction sets this CPU can run (isa.h). */
int cbn_isa_mask(void) { return cpu_isa_mask(); }

int cbn_params_size(void) { return (int)sizeof(struct bnp); }

/* The ##_isa suffix has to follow the function name, so each entry point spells its call out per ISA. */
#if HAVE_X86
#define CALL3(isa, name, args)                                 \
    do {                                                       \
        if ((isa) == 2) { name##_avx512 args; return 0; }       \
        if ((isa) == 1) { name##_avx2 args; return 0; }         \
        if ((isa) == 0) { name##_generic args; return 0; }      \
        return -2;                                             \
    } while (0)
#else
#define CALL3(isa, name, args)                                 \
    do {                                                       \
        if ((isa) == 0) { name##_generic args; return 0; }      \
        return -2;                                             \
    } while (0)
#endif

/* BatchNorm TRAIN forward for channels c0..c1: batch mean and biased variance (float64 sums), xhat (when
 * p->keep), y; mean/var/inv_std (C,) receive the statistics and 1/sqrt(var + eps). y may be x (in place). */
int cbn_bn_fwd(int isa, const float *x, float *y, float *xhat, const float *gamma, const float *beta,
               float *mean, float *var, float *inv_std, const struct bnp *p, long c0, long c1)
{
    CALL3(isa, bn_fwd, (x, y, xhat, gamma, beta, mean, var, inv_std, p, c0, c1));
}

/* BatchNorm TRAIN backward for channels c0..c1: dgamma = sum dy*xhat, dbeta = sum dy (float64 sums, written
 * to the (C,) outputs), and when p->want_dx, dx = (dy - xhat*dgamma/m - dbeta/m) * scale (scale = gamma /
 * sqrt(var + eps)). dx may be dy (in place). */
int cbn_bn_bwd(int isa, const float *dy, const float *xhat, const float *scale, float *dx, float *dgamma,
               float *dbeta, const struct bnp *p, long c0, long c1)
{
    CALL3(isa, bn_bwd, (dy, xhat, scale, dx, dgamma, dbeta, p, c0, c1));
}

/* ReLU forward on elements i0..i1: slope 0: y = x unless x <= 0, then +0 (NumPy's maximum(x, 0): NaN kept,
 * -0 -> +0); else y = x > 0 ? x : x*slope. y may be x. */
int cbn_relu_fwd(int isa, const float *x, float *y, float slope, long i0, long i1)
{
    CALL3(isa, relu_fwd, (x, y, slope, i0, i1));
}

/* ReLU backward on elements i0..i1: slope 0: dx = dy * (x > 0 ? 1 : 0) (NumPy's dy * (x > 0): inf*0 is NaN,
 * -1*0 is -0); else dx = x > 0 ? dy : dy*slope. dx may be dy. */
int cbn_relu_bwd(int isa, const float *x, const float *dy, float *dx, float slope, long i0, long i1)
{
    CALL3(isa, relu_bwd, (x, dy, dx, slope, i0, i1));
}

/* The module itself is empty: it exists so that setuptools builds and installs the shared library. */
static struct PyModuleDef cbn_module = {PyModuleDef_HEAD_INIT, "_cbn", "BatchNorm/ReLU kernels (ctypes).", -1, NULL};

PyMODINIT_FUNC PyInit__cbn(void) { return PyModule_Create(&cbn_module); }

#else /* CBN_KERNELS: one instantiation of the kernels for vector width VW */

typedef float FN(vec) __attribute__((vector_size(VW * 4)));
typedef float FN(uvec) __attribute__((vector_size(VW * 4), aligned(4)));
typedef int FN(ivec) __attribute__((vector_size(VW * 4)));
typedef double FN(dvec) __attribute__((vector_size(VW * 8)));

#define LOAD(p) (*(const FN(uvec) *)(p))
#define STORE(p, v) (*(FN(uvec) *)(p) = (v))
#define WIDEN(v) __builtin_convertvector((v), FN(dvec))

TARGET static inline double FN(hsum)(FN(dvec) v)
{
    double s = 0.0;
    for (int l = 0; l < VW; l++) s += v[l];
    return s;
}

/* sum of a - k over a[0..n) and, when sq, of (a - k)^2 (k = 0 when not sq), in float64: two vector
 * accumulators each, then the scalar tail */
TARGET static void FN(row_sums)(const float *a, long n, double k, double *s1, double *s2, int sq)
{
    FN(dvec) u0 = {0}, u1 = {0}, v0 = {0}, v1 = {0};
    /* scalars are splatted as `s - {0}`: `{0} + s` would turn -0.0 into +0.0 (the NumPy path keeps the sign) */
    const FN(dvec) kv = k - (FN(dvec)){0};
    long i = 0;
    if (sq) {
        for (; i + 2 * VW <= n; i += 2 * VW) {
            const FN(dvec) d0 = WIDEN(LOAD(a + i)) - kv, d1 = WIDEN(LOAD(a + i + VW)) - kv;
            u0 += d0; u1 += d1;
            v0 += d0 * d0; v1 += d1 * d1;
        }
    } else {
        for (; i + 2 * VW <= n; i += 2 * VW) {
            u0 += WIDEN(LOAD(a + i));
            u1 += WIDEN(LOAD(a + i + VW));
        }
    }
    double t1 = FN(hsum)(u0 + u1), t2 = FN(hsum)(v0 + v1);
    for (; i < n; i++) {
        const double d = (double)a[i] - k;
        t1 += d;
        t2 += d * d;
    }
    *s1 += t1;
    if (sq) *s2 += t2;
}

/* sum of dy and of dy*xh over [0, n), float64 */
TARGET static void FN(grad_sums)(const float *dy, const float *xh, long n, double *sb, double *sg)
{
    FN(dvec) b0 = {0}, b1 = {0}, g0 = {0}, g1 = {0};
    long i = 0;
    for (; i + 2 * VW <= n; i += 2 * VW) {
        const FN(dvec) d0 = WIDEN(LOAD(dy + i)), d1 = WIDEN(LOAD(dy + i + VW));
        b0 += d0; b1 += d1;
        g0 += d0 * WIDEN(LOAD(xh + i));
        g1 += d1 * WIDEN(LOAD(xh + i + VW));
    }
    double tb = FN(hsum)(b0 + b1), tg = FN(hsum)(g0 + g1);
    for (; i < n; i++) {
        tb += (double)dy[i];
        tg += (double)dy[i] * (double)xh[i];
    }
    *sb += tb;
    *sg += tg;
}

TARGET static void FN(bn_fwd)(const float *x, float *y, float *xhat, const float *gamma, const float *beta,
                              float *mean_out, float *var_out, float *inv_out, const struct bnp *p, long c0, long c1)
{
    const long S = p->S, rs = p->C * p->S;
    const double m = (double)p->N * (double)S;
    for (long c = c0; c < c1; c++) {
        const float *xc = x + c * S;
        double s1 = 0.0, s2 = 0.0, mu, v;
        if (m <= 0) {
            mu = 0.0; v = 0.0;
        } else if (p->onepass) {
            const double k = (double)xc[0]; /* a shift inside the data range: no cancellation from a large mean */
            for (long n = 0; n < p->N; n++) FN(row_sums)(xc + n * rs, S, k, &s1, &s2, 1);
            const double d = s1 / m;
            mu = k + d;
            v = s2 / m - d * d;
            if (v < 0.0) v = 0.0;
        } else {
            for (long n = 0; n < p->N; n++) FN(row_sums)(xc + n * rs, S, 0.0, &s1, &s2, 0);
            mu = s1 / m;
            s1 = 0.0;
            for (long n = 0; n < p->N; n++) FN(row_sums)(xc + n * rs, S, mu, &s1, &s2, 1);
            v = s2 / m;
        }
        const float muf = (float)mu, inv = (float)(1.0 / sqrt(v + p->eps));
        mean_out[c] = muf;
        var_out[c] = (float)v;
        inv_out[c] = inv;
        const float g = p->affine ? gamma[c] : 1.0f, b = p->affine ? beta[c] : 0.0f;
        /* the float32 operations of the NumPy path: xhat = (x - mu) * inv, y = xhat * g + b */
        const FN(vec) muv = muf - (FN(vec)){0}, iv = inv - (FN(vec)){0}, gv = g - (FN(vec)){0},
                      bv = b - (FN(vec)){0};
        for (long n = 0; n < p->N; n++) {
            const long off = c * S + n * rs;
            const float *xr = x + off;
            float *yr = y + off, *hr = p->keep ? xhat + off : NULL;
            long i = 0;
            for (; i + VW <= S; i += VW) {
                FN(vec) t = (LOAD(xr + i) - muv) * iv;
                if (hr) STORE(hr + i, t);
                if (p->affine) { t = t * gv; t = t + bv; }
                STORE(yr + i, t);
            }
            for (; i < S; i++) {
                float t = (xr[i] - muf) * inv;
                if (hr) hr[i] = t;
                if (p->affine) { t = t * g; t = t + b; }
                yr[i] = t;
            }
        }
    }
}

TARGET static void FN(bn_bwd)(const float *dy, const float *xhat, const float *scale, float *dx, float *dgamma,
                              float *dbeta, const struct bnp *p, long c0, long c1)
{
    const long S = p->S, rs = p->C * p->S;
    const double m = (double)p->N * (double)S;
    for (long c = c0; c < c1; c++) {
        double sb = 0.0, sg = 0.0;
        for (long n = 0; n < p->N; n++) FN(grad_sums)(dy + c * S + n * rs, xhat + c * S + n * rs, S, &sb, &sg);
        dgamma[c] = (float)sg;
        dbeta[c] = (float)sb;
        if (!p->want_dx || m <= 0) continue;
        /* the float32 operations of the NumPy path: dx = ((dy - xhat*a) - b) * s */
        const float a = (float)(sg / m), b = (float)(sb / m), s = scale[c];
        const FN(vec) av = a - (FN(vec)){0}, bv = b - (FN(vec)){0}, sv = s - (FN(vec)){0};
        for (long n = 0; n < p->N; n++) {
            const long off = c * S + n * rs;
            const float *dr = dy + off, *hr = xhat + off;
            float *o = dx + off;
            long i = 0;
            for (; i + VW <= S; i += VW) {
                FN(vec) t = LOAD(hr + i) * av;
                t = LOAD(dr + i) - t;
                t = t - bv;
                STORE(o + i, t * sv);
            }
            for (; i < S; i++) {
                float t = hr[i] * a;
                t = dr[i] - t;
                t = t - b;
                o[i] = t * s;
            }
        }
    }
}

TARGET static void FN(relu_fwd)(const float *x, float *y, float slope, long i0, long i1)
{
    long i = i0;
    if (slope == 0.0f) {
        for (; i + VW <= i1; i += VW) {
            const FN(vec) v = LOAD(x + i);
            const FN(ivec) drop = v <= 0.0f; /* false for NaN: kept */
            STORE(y + i, (FN(vec))((FN(ivec))v & ~drop));
        }
        for (; i < i1; i++) y[i] = x[i] <= 0.0f ? 0.0f : x[i];
    } else {
        const FN(vec) sv = slope - (FN(vec)){0};
        for (; i + VW <= i1; i += VW) {
            const FN(vec) v = LOAD(x + i);
            const FN(ivec) pos = v > 0.0f;
            STORE(y + i, (FN(vec))(((FN(ivec))v & pos) | ((FN(ivec))(v * sv) & ~pos)));
        }
        for (; i < i1; i++) y[i] = x[i] > 0.0f ? x[i] : x[i] * slope;
    }
}

TARGET static void FN(relu_bwd)(const float *x, const float *dy, float *dx, float slope, long i0, long i1)
{
    long i = i0;
    if (slope == 0.0f) {
        const FN(ivec) one = (FN(ivec)){0} + 0x3f800000; /* 1.0f */
        for (; i + VW <= i1; i += VW) {
            const FN(ivec) pos = LOAD(x + i) > 0.0f;
            STORE(dx + i, LOAD(dy + i) * (FN(vec))(pos & one));
        }
        for (; i < i1; i++) dx[i] = dy[i] * (x[i] > 0.0f ? 1.0f : 0.0f);
    } else {
        const FN(vec) sv = slope - (FN(vec)){0};
        for (; i + VW <= i1; i += VW) {
            const FN(vec) d = LOAD(dy + i);
            const FN(ivec) pos = LOAD(x + i) > 0.0f;
            STORE(dx + i, (FN(vec))(((FN(ivec))d & pos) | ((FN(ivec))(d * sv) & ~pos)));
        }
        for (; i < i1; i++) dx[i] = x[i] > 0.0f ? dy[i] : dy[i] * slope;
    }
}

#undef LOAD
#undef STORE
#undef WIDEN

#endif /* CBN_KERNELS */
