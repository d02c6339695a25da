/* caffelite._native._ci8glue: the non-convolution steps of the int8 engine (caffelite/jacinto/int8_engine.py)
 * for the CPU, an optional compiled helper called through ctypes (caffelite/ops/int8_glue.py).
 *
 * What runs here, every result bit for bit what the engine's NumPy steps compute:
 * - a depthwise Deconvolution on integer inputs, requantized to the output grid. Two arithmetics:
 *   "float": the float simulation's own float32 arithmetic (dequantized inputs from a table of the
 *   simulation's float32 values, float32 products, float32 sums in the NumPy path's order: taps in row-major
 *   order of the kernel), then the engine's quantizer; "int": int32 sums of integer inputs x integer weights,
 *   planned only where the float32 values are integers times powers of two and the sums stay below 2**24, so
 *   that every float32 product and partial sum of the simulation is exact (the value is sum * scale).
 *   Optionally fused with a following ArgMax over the channels (ties to the larger index).
 * - MAX pooling on int16 integers (Caffe's windows) with an optional requantising lookup table;
 * - ArgMax over axis 1 of int16 integers (top_k 1, ties to the larger index), float32 indices;
 * - a two-input Eltwise as a 2-D lookup table;
 * - the float32 Bias (y = x + b[channel]) followed by the quantizer.
 *
 * The quantizer (caffelite/ops/int8_lib.py's quantize_float): v = x*st + off in double, clamp to [lo, hi],
 * round to nearest (ties even, or away from zero). Built with -ffp-contract=off: no fused multiply-adds.
 * Every output value is computed by one task in a fixed order: results do not depend on the thread count.
 * The kernels are compiled once per instruction set (this file includes itself with FN / TARGET defined).
 */
#ifndef CI8G_KERNELS

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

#include "isa.h"
#include "qround.h"

/* One depthwise Deconvolution call (mirrored by a ctypes Structure in int8_glue.py). */
struct ci8g_deconv {
    long N, C, H, W, Ho, Wo;   /* input (N, C, H, W), output (N, C, Ho, Wo) */
    int kh, kw, sh, sw, ph, pw;
    int mode;                  /* 0: float32 arithmetic, 1: int32 sums */
    int qlo, nq;               /* table index of an input integer q: q - qlo, in [0, nq) */
    const float *tabf;         /* mode 0: float32 value of each input integer */
    const int32_t *tabi;       /* mode 1: integer value of each input integer (float value = tabi * 2**-ex) */
    const float *wf;           /* mode 0: (C, kh, kw) float32 weights */
    const int32_t *wi;         /* mode 1: (C, kh, kw) integer weights */
    double scale;              /* mode 1: float value of a sum = sum * scale (a power of two) */
    double st, off, lo, hi;    /* output quantizer */
    int away;                  /* ties away from zero (else to even) */
    float fthr;                /* mode 0: > 0 enables the float32 quantizer (quant_fast) with this threshold */
    float inv;                 /* mode 0: > 0 when tabf[k] == (float)(qlo + k) * inv for every k (checked by the
                                * caller): the conversion multiplies instead of looking up */
    const int16_t *in;
    int16_t *out;              /* (N, C, Ho, Wo) integers, or NULL */
    float *amax;               /* (N, 1, Ho, Wo) ArgMax over the channels, or NULL */
};

/* One Bias + quantize call: integers of float32 (x + b[channel]) of x seen as (outer*dim, inner) rows, row r of
 * channel r % dim, on the grid st, off, lo, hi (mirrored by a ctypes Structure in int8_glue.py). */
struct ci8g_bq {
    const float *x, *b;
    long dim, inner;
    double st, off, lo, hi;
    int away;                  /* ties away from zero (else to even) */
    float fthr;                /* > 0 enables the float32 quantizer (quant_fast) with this threshold */
    int16_t *out;
};

/* One MAX pooling call. */
struct ci8g_pool {
    long P, H, W, Ho, Wo;      /* planes (N*C), input and output extents */
    int kh, kw, sh, sw, ph, pw;
    int qlo, nq;               /* lut index of an integer q: q - qlo */
    const int16_t *lut;        /* requantising table, or NULL (identity) */
    const int16_t *in;
    int16_t *out;
};

#define CI8G_KERNELS 1

#define FN(x) x##_generic
#define TARGET
#include "ci8glue.c"
#undef FN
#undef TARGET

#if HAVE_X86
#define FN(x) x##_avx2
#define TARGET TARGET_AVX2
#include "ci8glue.c"
#undef FN
#undef TARGET

/* 512-bit vectors (GCC prefers 256-bit ones by default): the quantizer's double lanes are the bulk of the work */
#define FN(x) x##_avx512
#define TARGET __attribute__((target("avx512f,avx512dq,avx512vl,avx512bw,fma,prefer-vector-width=512")))
#include "ci8glue.c"
#undef FN
#undef TARGET
#endif

int ci8g_isa_mask(void) { return cpu_isa_mask(); }

int ci8g_deconv_size(void) { return (int)sizeof(struct ci8g_deconv); }

int ci8g_pool_size(void) { return (int)sizeof(struct ci8g_pool); }


/* Deconvolution of tasks t0..t1 (task = n * blocks + block of rb output rows, all channels); 0, -1 (no memory),
 * -3 (an input integer outside the table), -5 (more than 64 kernel taps). */
int ci8g_deconv(int isa, const struct ci8g_deconv *p, long rb, long t0, long t1)
{
    ISA_CALL(isa, deconv, (p, rb, t0, t1));
}

/* MAX pooling of output rows t0..t1 (task = plane*Ho + oy); -4 when a window is empty. */
int ci8g_pool(int isa, const struct ci8g_pool *p, long t0, long t1) { ISA_CALL(isa, pool, (p, t0, t1)); }

/* ArgMax over C of int16 x (outer, C, inner) into float32 out (outer, inner), tasks = outer * blocks of
 * 4096 positions. */
int ci8g_argmax(int isa, const int16_t *x, long C, long inner, float *out, long t0, long t1)
{
    ISA_CALL(isa, argmax, (x, C, inner, out, t0, t1));
}

/* out[i] = lut[(a[i] - lo1) * n2 + (b[i] - lo2)] for i in [t0, t1); -3 when an index is outside the table. */
int ci8g_lut2(int isa, const int16_t *a, const int16_t *b, const int16_t *lut, long lo1, long n1, long lo2, long n2,
              int16_t *out, long t0, long t1)
{
    ISA_CALL(isa, lut2, (a, b, lut, lo1, n1, lo2, n2, out, t0, t1));
}

/* struct ci8g_bq's call for tasks t0..t1 (task = row * blocks + block of 2048 values). */
int ci8g_bias_quant(int isa, const struct ci8g_bq *p, long t0, long t1)
{
    ISA_CALL(isa, bias_quant, (p->x, p->b, p->dim, p->inner, p->st, p->off, p->lo, p->hi, p->away, p->fthr, p->out,
                               t0, t1));
}

int ci8g_bq_size(void) { return (int)sizeof(struct ci8g_bq); }

/* The module itself is empty: it exists so that setuptools builds and installs the shared library. */
static struct PyModuleDef ci8g_module = {PyModuleDef_HEAD_INIT, "_ci8glue", "int8 engine glue kernels (ctypes).",
                                         -1, NULL};

PyMODINIT_FUNC PyInit__ci8glue(void) { return PyModule_Create(&ci8g_module); }

#else /* CI8G_KERNELS: one instantiation of the kernels */

/* q[m] = quantized (v[m] * pre) for m < n (pre = 1 for float sums, the power of two of an integer sum): times st,
 * plus off, clip_round (qround.h). The loops are branch-free so that they vectorize; ties away from zero get their
 * own loop. */
#define QUANT_LOOP(T)                                                                                   \
    TARGET static void FN(quant_##T)(const T *restrict v, long n, double pre, double st, double off,       \
                                     double lo, double hi, int away, int16_t *restrict q)                 \
    {                                                                                                    \
        if (!away) {                                                                                     \
            for (long m = 0; m < n; m++) {                                                               \
                double x = (double)v[m] * pre;                                                           \
                x = x * st;                                                                              \
                q[m] = (int16_t)clip_round(x + off, lo, hi, 0);                                          \
            }                                                                                            \
        } else {                                                                                         \
            for (long m = 0; m < n; m++) {                                                               \
                double x = (double)v[m] * pre;                                                           \
                x = x * st;                                                                              \
                q[m] = (int16_t)clip_round(x + off, lo, hi, 1);                                          \
            }                                                                                            \
        }                                                                                                \
    }
QUANT_LOOP(float)
QUANT_LOOP(int32_t)

static inline long FN(floordiv)(long a, long b) { return a >= 0 ? a / b : -((-a + b - 1) / b); }

/* whether every integer of src[0..n) is a table index: qlo <= q < qlo + nq */
TARGET static int FN(in_table)(const int16_t *src, long n, int qlo, int nq)
{
    int mn = 32767, mx = -32768;
    for (long x = 0; x < n; x++) {
        mn = src[x] < mn ? src[x] : mn;
        mx = src[x] > mx ? src[x] : mx;
    }
    return n == 0 || (mn >= qlo && mx < qlo + nq);
}

/* Integers of float32 values a[0..n) as the double quantizer gives them (quant_float), computed in float32
 * where that provably rounds the same: g = fl32(fl32(a*st) + off) is within E = 2**-20 * (M + 2|off| + 1) of
 * the double value v (M bounds |g| after the clamp to [lo - 1, hi + 1]; the float32 errors are below 2**-23 of
 * that), so where g is farther than E from every half-integer (|g - rint(g)| <= thr = 0.5 - E) both round to
 * the same integer, and a clamp to the integer bounds commutes with the rounding. A block of values with one
 * closer (ties among them) goes through the double quantizer. st and off must be float32 values (checked by the
 * caller, int8_glue.fast_threshold). */
TARGET static void FN(quant_fast)(const float *restrict a, long n, double st, double off, double lo, double hi,
                                  int away, float thr, int16_t *restrict q)
{
    const float fst = (float)st, foff = (float)off, flo = (float)lo, fhi = (float)hi;
    const float lo1 = flo - 1.0f, hi1 = fhi + 1.0f;
    enum { B = 64 };  /* blocks: a block with a value near a boundary is redone by the double quantizer */
    for (long m0 = 0; m0 < n; m0 += B) {
        const long m1 = m0 + B < n ? m0 + B : n;
        int any = 0;
        for (long m = m0; m < m1; m++) {
            float g = a[m] * fst;
            g = g + foff;
            g = g < lo1 ? lo1 : g;
            g = g > hi1 ? hi1 : g;
            float r = (g + 0x1.8p23f) - 0x1.8p23f;
            const float d = g - r;
            any |= !(fabsf(d) <= thr);
            r = r < flo ? flo : r;
            r = r > fhi ? fhi : r;
            q[m] = (int16_t)(int32_t)r;
        }
        if (any) FN(quant_float)(a + m0, m1 - m0, 1.0, st, off, lo, hi, away, q + m0);
    }
}

/* one column phase (outputs x = rx + sw*m, m < Mx) of one output row of channel c: the taps of the valid source
 * rows (rows[r] = converted row of kernel row ri[r]) and of the phase's kernel columns (tj[k], reading source
 * column m + to[k]) in row-major kernel order, p0 then acc + p_t, into acc. The common tap counts run in one
 * pass. */
#define PHASE(NAME, T, WT)                                                                                    \
    TARGET static void FN(NAME)(const struct ci8g_deconv *p, const T *const *rows, const int *ri, int nr,       \
                                const int *tj, const long *to, int ntj, long c, long Mx, long L,                \
                                T *restrict acc)                                                                \
    {                                                                                                       \
        const T *src[64];                                                                                   \
        T w[64];                                                                                            \
        int nt = 0;                                                                                         \
        for (int r = 0; r < nr; r++)                                                                        \
            for (int k = 0; k < ntj; k++) {                                                                 \
                src[nt] = rows[r] + L + to[k];                                                              \
                w[nt++] = p->WT[(c * p->kh + ri[r]) * p->kw + tj[k]];                                       \
            }                                                                                               \
        if (nt == 4) {                                                                                      \
            const T *restrict s0 = src[0], *restrict s1 = src[1], *restrict s2 = src[2], *restrict s3 = src[3]; \
            const T w0 = w[0], w1 = w[1], w2 = w[2], w3 = w[3];                                             \
            for (long m = 0; m < Mx; m++) {                                                                 \
                T a = s0[m] * w0;                                                                           \
                a = a + s1[m] * w1;                                                                         \
                a = a + s2[m] * w2;                                                                         \
                acc[m] = a + s3[m] * w3;                                                                    \
            }                                                                                               \
            return;                                                                                         \
        }                                                                                                   \
        if (nt == 2) {                                                                                      \
            const T *restrict s0 = src[0], *restrict s1 = src[1];                                           \
            const T w0 = w[0], w1 = w[1];                                                                   \
            for (long m = 0; m < Mx; m++) acc[m] = s0[m] * w0 + s1[m] * w1;                                 \
            return;                                                                                         \
        }                                                                                                   \
        for (long m = 0; m < Mx; m++) acc[m] = 0;                                                           \
        for (int t = 0; t < nt; t++) {                                                                      \
            const T *restrict s = src[t];                                                                   \
            const T wt = w[t];                                                                              \
            for (long m = 0; m < Mx; m++) acc[m] = acc[m] + s[m] * wt;                                      \
        }                                                                                                   \
    }
PHASE(phase_f, float, wf)
PHASE(phase_i, int32_t, wi)

/* Tasks: (n, block of rb output rows); per channel, the source rows of the block are converted once (float or
 * integer values from the table, zero margins), then each output row is computed phase by phase, interleaved
 * into a contiguous row and written and/or folded into the running ArgMax. */
TARGET static int FN(deconv)(const struct ci8g_deconv *p, long rb, long t0, long t1)
{
    const int sw = p->sw, sh = p->sh;
    /* source columns read by any column phase: [mn, mxi] -> zero margins around each converted row */
    long mn = 0, mxi = p->W - 1, Mmax = 0;
    for (int rx = 0; rx < sw; rx++) {
        const long Mx = (p->Wo - rx + sw - 1) / sw;
        if (Mx > Mmax) Mmax = Mx;
        for (int j = 0; j < p->kw && Mx > 0; j++) {
            const long u = rx + p->pw - j;
            if (((u % sw) + sw) % sw) continue;
            const long o = FN(floordiv)(u, sw);
            if (o < mn) mn = o;
            if (Mx - 1 + o > mxi) mxi = Mx - 1 + o;
        }
    }
    const long L = -mn, len = mxi - mn + 1;
    if (p->kh * p->kw > 64 || sw > 64) return -5;  /* the tap lists hold 64 */
    int tj[64][64], ntj[64];  /* per column phase: its kernel columns and their source offsets */
    long to[64][64];
    for (int rx = 0; rx < sw; rx++) {
        ntj[rx] = 0;
        for (int j = 0; j < p->kw; j++) {
            const long u = rx + p->pw - j;
            if (((u % sw) + sw) % sw) continue;
            tj[rx][ntj[rx]] = j;
            to[rx][ntj[rx]++] = FN(floordiv)(u, sw);
        }
    }
    const long nsrc = (rb - 1) / sh + p->kh / sh + 2;  /* source rows one block reads, at most */
    const int isf = p->mode == 0;
    const long nblk = (p->Ho + rb - 1) / rb;
    const size_t srcb = (size_t)nsrc * len * 4, accb = (size_t)(Mmax + 16) * 4, qb = (size_t)sw * (Mmax + 16) * 2;
    const size_t rowb = (size_t)(p->Wo + 16) * 2, amb = p->amax ? (size_t)rb * (p->Wo + 16) * 2 * 2 : 0;
    char *mem = calloc(1, srcb + accb + qb + rowb + amb + 64);
    if (!mem) return -1;
    char *src0 = mem;
    void *acc = mem + srcb;
    int16_t *qph = (int16_t *)(mem + srcb + accb);
    int16_t *rowq = (int16_t *)(mem + srcb + accb + qb);
    int16_t *best = (int16_t *)(mem + srcb + accb + qb + rowb);
    int16_t *bidx = best + (p->amax ? rb * (p->Wo + 16) : 0);
    int *yri = malloc(sizeof(int) * (size_t)rb * (2 * p->kh + 1));
    if (!yri) { free(mem); return -1; }
    int *yrow = yri + rb * p->kh, *ynr = yrow + rb * p->kh;
    int rc = 0;
    for (long t = t0; t < t1 && !rc; t++) {
        const long n = t / nblk, y0 = t % nblk * rb, y1 = y0 + rb < p->Ho ? y0 + rb : p->Ho;
        /* source rows of the block: [s0, s1) within the image */
        long s0 = p->H, s1 = 0;
        for (long y = y0; y < y1; y++)
            for (int i = 0; i < p->kh; i++) {
                const long v = y + p->ph - i;
                if (v < 0 || v % sh || v / sh >= p->H) continue;
                if (v / sh < s0) s0 = v / sh;
                if (v / sh + 1 > s1) s1 = v / sh + 1;
            }
        if (s1 - s0 > nsrc) { rc = -1; break; }
        for (long y = y0; y < y1; y++) {  /* each output row's valid kernel rows and their converted rows */
            int nr = 0;
            for (int i = 0; i < p->kh; i++) {
                const long v = y + p->ph - i;
                if (v < 0 || v % sh || v / sh >= p->H) continue;
                yri[(y - y0) * p->kh + nr] = i;
                yrow[(y - y0) * p->kh + nr++] = (int)(v / sh - s0);
            }
            ynr[y - y0] = nr;
        }
        for (long c = 0; c < p->C && !rc; c++) {
            const int16_t *plane = p->in + (n * p->C + c) * p->H * p->W;
            for (long s = s0; s < s1; s++) {
                const int16_t *src = plane + s * p->W;
                if (!FN(in_table)(src, p->W, p->qlo, p->nq)) { rc = -3; break; }
                if (isf && p->inv > 0) {
                    float *restrict d = (float *)(src0 + (size_t)(s - s0) * len * 4) + L;
                    const float inv = p->inv;
                    for (long x = 0; x < p->W; x++) d[x] = (float)src[x] * inv;
                } else if (isf) {
                    float *restrict d = (float *)(src0 + (size_t)(s - s0) * len * 4) + L;
                    const float *restrict tab = p->tabf - p->qlo;
                    for (long x = 0; x < p->W; x++) d[x] = tab[src[x]];
                } else {
                    int32_t *restrict d = (int32_t *)(src0 + (size_t)(s - s0) * len * 4) + L;
                    const int32_t *restrict tab = p->tabi - p->qlo;
                    for (long x = 0; x < p->W; x++) d[x] = tab[src[x]];
                }
            }
            if (rc) break;
            for (long y = y0; y < y1; y++) {
                const void *rows[64];
                const int *ri = yri + (y - y0) * p->kh, nr = ynr[y - y0];
                for (int r = 0; r < nr; r++) rows[r] = src0 + (size_t)yrow[(y - y0) * p->kh + r] * len * 4;
                for (int rx = 0; rx < sw; rx++) {
                    const long Mx = (p->Wo - rx + sw - 1) / sw;
                    if (Mx <= 0) continue;
                    int16_t *qr = qph + rx * (Mmax + 16);
                    if (isf) {
                        FN(phase_f)(p, (const float *const *)rows, ri, nr, tj[rx], to[rx], ntj[rx], c, Mx, L, acc);
                        if (p->fthr > 0)
                            FN(quant_fast)(acc, Mx, p->st, p->off, p->lo, p->hi, p->away, p->fthr, qr);
                        else
                            FN(quant_float)(acc, Mx, 1.0, p->st, p->off, p->lo, p->hi, p->away, qr);
                    } else {
                        FN(phase_i)(p, (const int32_t *const *)rows, ri, nr, tj[rx], to[rx], ntj[rx], c, Mx, L,
                                    acc);
                        FN(quant_int32_t)(acc, Mx, p->scale, p->st, p->off, p->lo, p->hi, p->away, qr);
                    }
                }
                int16_t *restrict orow = p->out ? p->out + ((n * p->C + c) * p->Ho + y) * p->Wo : rowq;
                if (sw == 2) {
                    const int16_t *restrict a = qph, *restrict b = qph + Mmax + 16;
                    const long W2 = p->Wo / 2;
                    for (long m = 0; m < W2; m++) {
                        orow[2 * m] = a[m];
                        orow[2 * m + 1] = b[m];
                    }
                    if (p->Wo & 1) orow[p->Wo - 1] = a[W2];
                } else {
                    for (int rx = 0; rx < sw; rx++) {
                        const int16_t *a = qph + rx * (Mmax + 16);
                        for (long x = rx, m = 0; x < p->Wo; x += sw, m++) orow[x] = a[m];
                    }
                }
                if (p->amax) {
                    int16_t *restrict bb = best + (y - y0) * (p->Wo + 16), *restrict bi = bidx + (y - y0) * (p->Wo + 16);
                    if (c == 0) {
                        for (long x = 0; x < p->Wo; x++) { bb[x] = orow[x]; bi[x] = 0; }
                    } else {
                        const int16_t cc = (int16_t)c;
                        for (long x = 0; x < p->Wo; x++) {
                            const int hit = orow[x] >= bb[x];
                            bb[x] = hit ? orow[x] : bb[x];
                            bi[x] = hit ? cc : bi[x];
                        }
                    }
                }
            }
        }
        if (p->amax && !rc) {
            for (long y = y0; y < y1; y++) {
                float *restrict a = p->amax + (n * p->Ho + y) * p->Wo;
                const int16_t *restrict bi = bidx + (y - y0) * (p->Wo + 16);
                for (long x = 0; x < p->Wo; x++) a[x] = (float)bi[x];
            }
        }
    }
    free(yri);
    free(mem);
    return rc;
}

TARGET static int FN(pool)(const struct ci8g_pool *p, long t0, long t1)
{
    for (long t = t0; t < t1; t++) {
        const long pl = t / p->Ho, oy = t % p->Ho;
        const int16_t *plane = p->in + pl * p->H * p->W;
        int16_t *o = p->out + (pl * p->Ho + oy) * p->Wo;
        long hs = oy * p->sh - p->ph, he = hs + p->kh;
        if (he > p->H + p->ph) he = p->H + p->ph;
        if (hs < 0) hs = 0;
        if (he > p->H) he = p->H;
        if (he <= hs) return -4;
        if (p->kw == 2 && p->sw == 2 && p->pw == 0 && 2 * p->Wo <= p->W) {
            /* the common tiling case: pairs of columns */
            const int16_t *r0 = plane + hs * p->W;
            for (long x = 0; x < p->Wo; x++) {
                const int16_t a = r0[2 * x], b = r0[2 * x + 1];
                o[x] = a > b ? a : b;
            }
            for (long h = hs + 1; h < he; h++) {
                const int16_t *r = plane + h * p->W;
                for (long x = 0; x < p->Wo; x++) {
                    const int16_t a = r[2 * x] > r[2 * x + 1] ? r[2 * x] : r[2 * x + 1];
                    o[x] = o[x] > a ? o[x] : a;
                }
            }
        } else {
            for (long x = 0; x < p->Wo; x++) {
                long ws = x * p->sw - p->pw, we = ws + p->kw;
                if (we > p->W + p->pw) we = p->W + p->pw;
                if (ws < 0) ws = 0;
                if (we > p->W) we = p->W;
                if (we <= ws) return -4;
                int16_t m = plane[hs * p->W + ws];
                for (long h = hs; h < he; h++)
                    for (long w = ws; w < we; w++) {
                        const int16_t v = plane[h * p->W + w];
                        m = v > m ? v : m;
                    }
                o[x] = m;
            }
        }
        if (p->lut) {
            if (!FN(in_table)(o, p->Wo, p->qlo, p->nq)) return -3;
            const int16_t *restrict tab = p->lut - p->qlo;
            for (long x = 0; x < p->Wo; x++) o[x] = tab[o[x]];
        }
    }
    return 0;
}

TARGET static int FN(argmax)(const int16_t *x, long C, long inner, float *out, long t0, long t1)
{
    enum { B = 4096 };
    int16_t best[B], idx[B];
    const long nb = (inner + B - 1) / B;
    for (long t = t0; t < t1; t++) {
        const long o = t / nb, i0 = t % nb * B;
        const long n = inner - i0 < B ? inner - i0 : B;
        const int16_t *base = x + o * C * inner + i0;
        for (long i = 0; i < n; i++) { best[i] = base[i]; idx[i] = 0; }
        for (long c = 1; c < C; c++) {
            const int16_t *v = base + c * inner;
            for (long i = 0; i < n; i++) {
                const int hit = v[i] >= best[i];
                best[i] = hit ? v[i] : best[i];
                idx[i] = hit ? (int16_t)c : idx[i];
            }
        }
        float *d = out + o * inner + i0;
        for (long i = 0; i < n; i++) d[i] = (float)idx[i];
    }
    return 0;
}

TARGET static int FN(lut2)(const int16_t *a, const int16_t *b, const int16_t *lut, long lo1, long n1, long lo2,
                           long n2, int16_t *out, long t0, long t1)
{
    if (!FN(in_table)(a + t0, t1 - t0, (int)lo1, (int)n1) || !FN(in_table)(b + t0, t1 - t0, (int)lo2, (int)n2))
        return -3;
    const int16_t *restrict base = lut - lo1 * n2 - lo2;
    for (long i = t0; i < t1; i++) out[i] = base[a[i] * n2 + b[i]];
    return 0;
}

TARGET static int FN(bias_quant)(const float *x, const float *b, long dim, long inner, double st, double off,
                                 double lo, double hi, int away, float fthr, int16_t *out, long t0, long t1)
{
    enum { B = 2048 };
    float y[B];
    const long nb = (inner + B - 1) / B;
    for (long t = t0; t < t1; t++) {
        const long r = t / nb, i0 = t % nb * B;
        const long n = inner - i0 < B ? inner - i0 : B;
        const float bb = b[r % dim];
        const float *restrict xr = x + r * inner + i0;
        for (long i = 0; i < n; i++) y[i] = xr[i] + bb;  /* the float32 add of the Bias layer */
        if (fthr > 0)
            FN(quant_fast)(y, n, st, off, lo, hi, away, fthr, out + r * inner + i0);
        else
            FN(quant_float)(y, n, 1.0, st, off, lo, hi, away, out + r * inner + i0);
    }
    return 0;
}

#endif
