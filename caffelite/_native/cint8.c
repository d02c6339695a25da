/* caffelite._native._cint8: integer convolution for quantized inference (an optional compiled helper).
 *
 * What it computes (caffelite/ops/int8.py holds the NumPy reference, which tests compare bitwise): for output
 * channel m and pixel p of a convolution of integer activations q_x with integer weights w' (16-bit lanes),
 *     acc = sum q_x * w'  (int32, exact),   s = sum q_x over the same window (only when e->B is needed),
 *     v = (A[m]*acc + B[m]*s) + C[m]        (double, in this order, no fused multiply-add),
 *     v = v < 0 ? v*slope : v (when relu);  v = v + off;  clamp to [lo, hi];  round to nearest (ties to even, or
 *     away from zero);  stored as int16.
 * A, B and C carry the input, weight and output scales, the weights' zero point, the bias and a folded
 * BatchNorm/Scale (caffelite/jacinto/int8_engine.py); B is the correction for weights stored with an offset.
 *
 * Activations and weights are 16-bit lanes multiplied in pairs (vpmaddwd / vpdpwssd): caffe-jacinto's default
 * weights are 12-bit, which do not fit the u8 x s8 products of vpdpbusd, and 8-bit activations fit too.
 * Instruction sets, chosen at run time: 0 portable C, 1 AVX2, 2 AVX-512BW, 3 AVX-512 VNNI.
 * Built with -ffp-contract=off so the double epilogue rounds exactly as the NumPy reference does.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "qround.h"

#define MB 8
#define MAX_KW 32

struct i8geom {
    int N, G, P, Hp, S, Wq;    /* input: images, groups, channel pairs per group, padded rows, phases, columns */
    int Cout, Mg, nmb;          /* output channels, per group, MB-blocks per group */
    int kh, kw, sh, dh;
    int Ho, Wo;
    int rg, bg;                 /* task chunk: output rows, channel blocks */
    int has_sum;                /* accumulate the window sums s (B != 0) */
    long tap_off[MAX_KW];
};

struct i8sparse {
    const long *ptr;     /* (Cout + 1): channel m's nonzero pairs are [ptr[m], ptr[m+1]) */
    const long *off;     /* input offset of each pair, relative to the group's packed input */
    const int32_t *w;    /* the two int16 weights of each pair */
};

struct i8epi {
    const double *A, *B, *C;
    int relu, ties_away;
    double slope, off, lo, hi;
    /* the float32 path of the AVX-512 epilogue (requant16f), when fast: per channel A, B, C in float32 and the
     * threshold below which a float32 value's distance to its nearest integer proves that the double value
     * rounds to that integer too (ops/int8.py fast_epilogue) */
    const float *FA, *FB, *FC, *FT;
    int fast;
};

static inline __attribute__((always_inline)) int16_t requant(const struct i8epi *e, double a, double b, double c,
                                                             int32_t acc, int32_t s)
{
    double v = a * (double)acc;
    v = v + b * (double)s;
    v = v + c;
    if (e->relu && v < 0) v = v * e->slope;
    v = v + e->off;
    return (int16_t)clip_round(v, e->lo, e->hi, e->ties_away);
}

#include "isa.h"

/* A packed input row's columns q that read the input (0 <= q*S + s - pw < W, input row y inside 0..H-1) are
 * [*qa, *qb); the packing functions zero the row's other columns here and fill those. */
static inline void row_span(int s, int S, int pw, int W, int Wq, int y, int H, int32_t *orow, int *qa_, int *qb_)
{
    int qa = pw - s > 0 ? (pw - s + S - 1) / S : 0;
    int qb = W - 1 + pw - s >= 0 ? (W - 1 + pw - s) / S + 1 : 0;
    if (qa > Wq) qa = Wq;
    if (qb > Wq) qb = Wq;
    if (qb < qa) qb = qa;
    if (y < 0 || y >= H) qb = qa;
    for (int q = 0; q < qa; q++) orow[q] = 0;
    for (int q = qb; q < Wq; q++) orow[q] = 0;
    *qa_ = qa;
    *qb_ = qb;
}

/* portable: 4 lanes, the pair product written out (sign-extended halves) */
typedef int32_t gvec __attribute__((vector_size(16)));
static inline gvec gdot2(gvec acc, gvec x, gvec w)
{
    const gvec xl = (x << 16) >> 16, xh = x >> 16, wl = (w << 16) >> 16, wh = w >> 16;
    return acc + xl * wl + xh * wh;
}
#define VW 4
#define NV 1
#define NVS 2
#define VADD(a, b) ((a) + (b))
#define VEC gvec
#define VZERO ((gvec){0, 0, 0, 0})
#define VLOAD(p) ({ gvec _v; __builtin_memcpy(&_v, (p), 16); _v; })
#define VSTORE(p, v) do { gvec _s = (v); __builtin_memcpy((p), &_s, 16); } while (0)
#define VBCAST(i) ((gvec){0, 0, 0, 0} + (int32_t)(i))
#define VDOT2(a, x, w) gdot2((a), (x), (w))
#define FN(x) x##_generic
#define TARGET
#include "cint8_kernel.h"
#include "cint8_undef.h"

#if HAVE_X86
#include <immintrin.h>
#define VW 8
#define NV 1
#define NVS 4
#define VADD(a, b) _mm256_add_epi32((a), (b))
#define VEC __m256i
#define VZERO _mm256_setzero_si256()
#define VLOAD(p) _mm256_loadu_si256((const __m256i *)(p))
#define VSTORE(p, v) _mm256_storeu_si256((__m256i *)(p), (v))
#define VBCAST(i) _mm256_set1_epi32(i)
#define VDOT2(a, x, w) _mm256_add_epi32((a), _mm256_madd_epi16((x), (w)))
#define FN(x) x##_avx2
#define TARGET __attribute__((target("avx2")))
#include "cint8_kernel.h"
#include "cint8_undef.h"

#define VW 16
#define NV 3
#define NVS 4
#define VADD(a, b) _mm512_add_epi32((a), (b))
#define VEC __m512i
#define VZERO _mm512_setzero_si512()
#define VLOAD(p) _mm512_loadu_si512((const void *)(p))
#define VSTORE(p, v) _mm512_storeu_si512((void *)(p), (v))
#define VBCAST(i) _mm512_set1_epi32(i)
#define VDOT2(a, x, w) _mm512_add_epi32((a), _mm512_madd_epi16((x), (w)))
#define FN(x) x##_avx512
#define TARGET __attribute__((target("avx512f,avx512bw")))
#define EPI512 1
#include "cint8_kernel.h"
#undef VDOT2
#undef FN
#undef TARGET

#define VDOT2(a, x, w) _mm512_dpwssd_epi32((a), (x), (w))
#define FN(x) x##_vnni
#define TARGET __attribute__((target("avx512f,avx512bw,avx512vnni")))
#include "cint8_kernel.h"
#undef VDOT2
#undef FN
#undef TARGET

/* u8 x s8 quads (vpdpbusd): activations that fit unsigned 8 bits and weights that fit signed 8 bits, four
 * channels per 32-bit lane (the same tiles; pack4 / group_sums4 below build its input) */
#define QUADS 1
#define VDOT2(a, x, w) _mm512_dpbusd_epi32((a), (x), (w))
#define FN(x) x##_vnni8
#define TARGET __attribute__((target("avx512f,avx512bw,avx512vnni")))
#include "cint8_kernel.h"
#include "cint8_quads.h"
#undef QUADS
#include "cint8_undef.h"
#undef EPI512
#endif

/* Instruction sets this CPU runs: bit 0 portable, 1 AVX2, 2 AVX-512BW, 3 AVX-512 VNNI. */
int ci8_isa_mask(void)
{
    int mask = 1;
#if HAVE_X86
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2")) mask |= 2;
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw")) {
        mask |= 4;
        if (__builtin_cpu_supports("avx512vnni")) mask |= 8;
    }
#endif
    return mask;
}

int ci8_geom_size(void) { return (int)sizeof(struct i8geom); }
int ci8_epi_size(void) { return (int)sizeof(struct i8epi); }
int ci8_tile_channels(void) { return MB; }
int ci8_vector_width(int isa) { return isa >= 2 ? 16 : isa == 1 ? 8 : 4; }

/* Forward tasks t0..t1 with instruction set isa (0..3); gsum: the group sums (NULL when e->B is all zero). */
int ci8_conv_fwd(int isa, const int32_t *x, const int32_t *gsum, const int32_t *wpk, const struct i8epi *e,
                 int16_t *out, const struct i8geom *p, long t0, long t1)
{
    if (p->kw > MAX_KW) return -1;
    if (p->Wo < ci8_vector_width(isa)) return -4;
    if (p->has_sum && !gsum) return -5;
#if HAVE_X86
    if (isa == 4) { fwd_vnni8(x, gsum, wpk, e, out, p, t0, t1); return 0; }
    if (isa == 3) { fwd_vnni(x, gsum, wpk, e, out, p, t0, t1); return 0; }
    if (isa == 2) { fwd_avx512(x, gsum, wpk, e, out, p, t0, t1); return 0; }
    if (isa == 1) { fwd_avx2(x, gsum, wpk, e, out, p, t0, t1); return 0; }
#endif
    if (isa != 0) return -2;
    fwd_generic(x, gsum, wpk, e, out, p, t0, t1);
    return 0;
}

/* Sparse forward: only the nonzero weight pairs of each output channel (sp); tasks as in sfwd. */
int ci8_sparse_fwd(int isa, const int32_t *x, const int32_t *gsum, const struct i8sparse *sp,
                   const struct i8epi *e, int16_t *out, const struct i8geom *p, long t0, long t1)
{
    if (p->Wo < ci8_vector_width(isa)) return -4;
    if (p->has_sum && !gsum) return -5;
#if HAVE_X86
    if (isa == 3) { sfwd_vnni(x, gsum, sp, e, out, p, t0, t1); return 0; }
    if (isa == 2) { sfwd_avx512(x, gsum, sp, e, out, p, t0, t1); return 0; }
    if (isa == 1) { sfwd_avx2(x, gsum, sp, e, out, p, t0, t1); return 0; }
#endif
    if (isa != 0) return -2;
    sfwd_generic(x, gsum, sp, e, out, p, t0, t1);
    return 0;
}

/* Sparse forward over paired nonzero weights (cint8_singles.h): AVX-512 only (isa 2 or 3), x the planar int16
 * input of ci8_pack16, p->P the channels per group, p->bg at most SS_MAXBG, Wo at least 32. */
int ci8_singles_fwd(int isa, const int16_t *x, const int32_t *gsum, const void *sp, const struct i8epi *e,
                    int16_t *out, const struct i8geom *p, long t0, long t1)
{
    if (p->Wo < 32) return -4;
    if (p->has_sum && !gsum) return -5;
    if (p->kw > MAX_KW) return -1;
#if HAVE_X86
    if (p->bg > SS_MAXBG || p->bg < 1) return -6;
    if (isa == 3) { ss_fwd_vnni(x, gsum, (const struct i8pairs *)sp, e, out, p, t0, t1); return 0; }
    if (isa == 2) { ss_fwd_avx512(x, gsum, (const struct i8pairs *)sp, e, out, p, t0, t1); return 0; }
#else
    (void)x; (void)sp; (void)e; (void)out; (void)t0; (void)t1;
#endif
    (void)isa;
    return -2;
}

/* Sparse forward over quads of nonzero int8 weights (cint8_quads.h): AVX-512 VNNI only, x the planar uint8
 * input of ci8_pack8, p->P the channels per group, p->bg at most QS_MAXBG, Wo at least 64. split: the groups hold
 * two quads each, the 32*hi and lo parts of 12-bit weights (q12_run). out is NULL when sp's pk takes the output
 * (struct i8pairs). */
int ci8_quads_fwd(int split, const uint8_t *x, const int32_t *gsum, const void *sp, const struct i8epi *e,
                  int16_t *out, const struct i8geom *p, long t0, long t1)
{
    if (p->Wo < 64) return -4;
    if (p->has_sum && !gsum) return -5;
    if (p->kw > MAX_KW) return -1;
#if HAVE_X86
    if (p->bg > QS_MAXBG || p->bg < 1) return -6;
    if (split) q12_fwd_vnni8(x, gsum, (const struct i8pairs *)sp, e, out, p, t0, t1);
    else qs_fwd_vnni8(x, gsum, (const struct i8pairs *)sp, e, out, p, t0, t1);
    return 0;
#else
    (void)split; (void)x; (void)sp; (void)e; (void)out; (void)t0; (void)t1;
    return -2;
#endif
}

/* Rows [r0, r1) of the planar layouts below, tasks t0..t1 (see ci8_pack16). */
#if HAVE_X86
__attribute__((target("avx512f,avx512bw")))
#endif
static inline __attribute__((always_inline)) int pack_planar(
    const int16_t *x, int H, int W, int Hp, int S, int Wq, int ph, int pw, long pstride, int R, void *outv,
    long t0, long t1, const int u8, const int off)
{
    const long hw = (long)H * W, rowlen = (long)S * Wq;
    const int nrb = (Hp + R - 1) / R;
    int16_t *out16 = (int16_t *)outv;
    uint8_t *out8 = (uint8_t *)outv;
    /* per stride phase s, the packed columns [qa, qb) that read the input (the same for every row and channel) */
    int qas[8], qbs[8];
    if (S > 8 || S < 1) return -7;
    for (int s = 0; s < S; s++) {
        int qa = pw - s > 0 ? (pw - s + S - 1) / S : 0;
        int qb = W - 1 + pw - s >= 0 ? (W - 1 + pw - s) / S + 1 : 0;
        if (qa > Wq) qa = Wq;
        if (qb > Wq) qb = Wq;
        if (qb < qa) qb = qa;
        qas[s] = qa, qbs[s] = qb;
    }
    for (long t = t0; t < t1; t++) {
        /* task t: rows [r0, r1) of plane nc (image and channel): tasks write no cache line in common unless they
         * split a plane (whose start is a 64-byte line: the caller's pstride) */
        const long nc = t / nrb;
        const int r0 = (int)(t % nrb) * R, r1 = r0 + R < Hp ? r0 + R : Hp;
        const int16_t *xc = x + nc * hw;
        const long ocs = nc * pstride;
        for (int r = r0; r < r1; r++) {
            const int y = r - ph;
            const int inside = y >= 0 && y < H;
            for (int s = 0; s < S; s++) {
                const int qa = qas[s], qb = inside ? qbs[s] : qas[s];
                const long o = ocs + r * rowlen + (long)s * Wq;
                const int16_t *restrict src = xc + (long)y * W + s - pw;
                if (u8) {
                    uint8_t *restrict orow = out8 + o;
                    for (int q = 0; q < qa; q++) orow[q] = (uint8_t)off;
                    for (int q = qb; q < Wq; q++) orow[q] = (uint8_t)off;
                    int q = qa;
#if HAVE_X86
                    if (S == 1) {
                        const __m512i vo = _mm512_set1_epi16((short)off);
                        for (; q + 32 <= qb; q += 32)
                            _mm256_storeu_si256((__m256i *)(orow + q), _mm512_cvtepi16_epi8(_mm512_add_epi16(
                                _mm512_loadu_si512((const void *)(src + q)), vo)));
                    }
                    if (S == 2) { /* every other column: 32 loaded, the even 16 kept (loads inside the row); the low
                                   * byte of each 32-bit lane plus off is the even column's */
                        for (; q + 16 <= qb && s - pw + 2 * q + 32 <= W; q += 16)
                            _mm_storeu_si128((__m128i *)(orow + q), _mm512_cvtepi32_epi8(_mm512_add_epi32(
                                _mm512_loadu_si512((const void *)(src + 2 * q)), _mm512_set1_epi32(off))));
                    }
#endif
                    for (; q < qb; q++) orow[q] = (uint8_t)(src[(long)q * S] + off);
                    continue;
                }
                int16_t *restrict orow = out16 + o;
                for (int q = 0; q < qa; q++) orow[q] = 0;
                for (int q = qb; q < Wq; q++) orow[q] = 0;
                if (S == 1) {
                    if (qb > qa) memcpy(orow + qa, src + qa, (size_t)(qb - qa) * sizeof(int16_t));
                } else {
                    int q = qa;
#if HAVE_X86
                    if (S == 2) { /* every other column: 32 loaded, the even 16 kept (loads inside the row) */
                        const __m512i even = _mm512_setr_epi32(0x00020000, 0x00060004, 0x000a0008, 0x000e000c,
                                                               0x00120010, 0x00160014, 0x001a0018, 0x001e001c,
                                                               0, 0, 0, 0, 0, 0, 0, 0);
                        for (; q + 16 <= qb && s - pw + 2 * q + 32 <= W; q += 16)
                            _mm256_storeu_si256((__m256i *)(orow + q), _mm512_castsi512_si256(
                                _mm512_permutexvar_epi16(even, _mm512_loadu_si512((const void *)(src + 2 * q)))));
                    }
#endif
                    for (; q < qb; q++) orow[q] = src[(long)q * S];
                }
            }
        }
    }
    return 0;
}

/* The planar layout of ci8_singles_fwd: x (N, G*Cg, H, W) int16 -> (N, G*Cg, pstride) int16, planes (Hp, S, Wq)
 * (pstride >= Hp*S*Wq, a multiple of 64 bytes chosen by the caller so that planes do not alias in the L1 cache),
 * zero padded (ph rows and pw columns before, zero past the input), columns split into S (<= 8) stride phases.
 * Tasks t0..t1 are (image and channel, block of R padded rows); ci8_planar_sums adds up the group sums after. */
#if HAVE_X86
__attribute__((target("avx512f,avx512bw")))
#endif
int ci8_pack16(const int16_t *x, int H, int W, int Hp, int S, int Wq, int ph, int pw, long pstride, int R,
               int16_t *out, long t0, long t1)
{
    return pack_planar(x, H, W, Hp, S, Wq, ph, pw, pstride, R, out, t0, t1, 0, 0);
}

/* ci8_pack16's layout in uint8 (the input of ci8_quads_fwd) of x + off: x + off must lie in 0..255 (off 128 takes
 * signed 8-bit input) and the padding is off too (the input's zero); pstride in bytes. */
#if HAVE_X86
__attribute__((target("avx512f,avx512bw")))
#endif
int ci8_pack8(const int16_t *x, int H, int W, int Hp, int S, int Wq, int ph, int pw, long pstride, int R, int off,
              uint8_t *out, long t0, long t1)
{
    return pack_planar(x, H, W, Hp, S, Wq, ph, pw, pstride, R, out, t0, t1, 1, off);
}

/* The group sums of packed planes x ((N, G*Cg, pstride), int16, or uint8 with u8): gsum (N, G, plane) int32, the
 * sum over a group's Cg planes at each of the plane's positions. Tasks t0..t1 are (image and group, block of L
 * positions, L a multiple of 16: blocks share no cache line of gsum). */
#if HAVE_X86
__attribute__((target("avx512f,avx512bw")))
#endif
int ci8_planar_sums(const void *x, int u8, int Cg, long plane, long pstride, long L, int32_t *gsum, long t0,
                    long t1)
{
    const long nb = (plane + L - 1) / L;
    const int16_t *x16 = (const int16_t *)x;
    const uint8_t *x8 = (const uint8_t *)x;
    for (long t = t0; t < t1; t++) {
        const long ng = t / nb, q0 = t % nb * L, q1 = q0 + L < plane ? q0 + L : plane;
        const long ob = ng * Cg * pstride;
        int32_t *g = gsum + ng * plane;
        long q = q0;
#if HAVE_X86
        if (u8) /* 32 positions a step in 16-bit sums of at most 257 planes (257 * 255 < 2**16), then widened */
            for (; q + 32 <= q1; q += 32) {
                __m512i lo = _mm512_setzero_si512(), hi = _mm512_setzero_si512();
                for (int c0 = 0; c0 < Cg; c0 += 257) {
                    const int c1 = c0 + 257 < Cg ? c0 + 257 : Cg;
                    __m512i acc = _mm512_setzero_si512();
                    for (int c = c0; c < c1; c++)
                        acc = _mm512_add_epi16(acc, _mm512_cvtepu8_epi16(_mm256_loadu_si256((const __m256i *)(
                                                        x8 + ob + c * pstride + q))));
                    lo = _mm512_add_epi32(lo, _mm512_cvtepu16_epi32(_mm512_castsi512_si256(acc)));
                    hi = _mm512_add_epi32(hi, _mm512_cvtepu16_epi32(_mm512_extracti64x4_epi64(acc, 1)));
                }
                _mm512_storeu_si512((void *)(g + q), lo);
                _mm512_storeu_si512((void *)(g + q + 16), hi);
            }
        for (; q + 16 <= q1; q += 16) {
            __m512i acc = _mm512_setzero_si512();
            for (int c = 0; c < Cg; c++)
                acc = _mm512_add_epi32(acc, u8 ? _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(
                                                     x8 + ob + c * pstride + q)))
                                               : _mm512_cvtepi16_epi32(_mm256_loadu_si256((const __m256i *)(
                                                     x16 + ob + c * pstride + q))));
            _mm512_storeu_si512((void *)(g + q), acc);
        }
#endif
        for (; q < q1; q++) {
            int32_t acc = 0;
            for (int c = 0; c < Cg; c++) acc += u8 ? x8[ob + c * pstride + q] : x16[ob + c * pstride + q];
            g[q] = acc;
        }
    }
    return 0;
}

/* Group sums of the packed input (tasks: image x group). */
int ci8_group_sums(int isa, const int32_t *x, int32_t *gsum, const struct i8geom *p, long t0, long t1)
{
#if HAVE_X86
    if (isa == 3) { gsum_vnni(x, gsum, p, t0, t1); return 0; }
    if (isa == 2) { gsum_avx512(x, gsum, p, t0, t1); return 0; }
    if (isa == 1) { gsum_avx2(x, gsum, p, t0, t1); return 0; }
#endif
    if (isa != 0) return -2;
    gsum_generic(x, gsum, p, t0, t1);
    return 0;
}

/* Pack integer activations x (N, G*Cg, H, W) int16 into the kernel's input: int32 channel pairs
 * (N, G*P, Hp, S, Wq), zero padded (ph rows and pw columns before; zero past the input and past Cg), columns
 * split into S stride phases. Tasks t0..t1 are (image, group, pair) planes. */
int ci8_pack(int isa, const int16_t *x, int G, int Cg, int H, int W, int P, int Hp, int S, int Wq, int ph, int pw,
             int32_t *out, long t0, long t1)
{
#if HAVE_X86
    if (isa == 3) { pack_vnni(x, G, Cg, H, W, P, Hp, S, Wq, ph, pw, out, t0, t1); return 0; }
    if (isa == 2) { pack_avx512(x, G, Cg, H, W, P, Hp, S, Wq, ph, pw, out, t0, t1); return 0; }
    if (isa == 1) { pack_avx2(x, G, Cg, H, W, P, Hp, S, Wq, ph, pw, out, t0, t1); return 0; }
#endif
    pack_generic(x, G, Cg, H, W, P, Hp, S, Wq, ph, pw, out, t0, t1);
    return 0;
}

/* The quads layout (isa 4): x (N, G*Cg, H, W) int16 holding 0..255 -> int32 lanes of four uint8 channels
 * (N, G*Q, Hp, S, Wq), zero padded like ci8_pack; tasks are (image, group, quad) planes. */
__attribute__((target("avx2"))) int ci8_pack4(const int16_t *x, int G, int Cg, int H, int W, int Q, int Hp,
                                              int S, int Wq, int ph, int pw, int32_t *out, long t0, long t1)
{
    for (long t = t0; t < t1; t++) {
        const long n = t / ((long)G * Q);
        const int g = (int)(t / Q % G), qq = (int)(t % Q);
        const int nk = Cg - 4 * qq < 4 ? Cg - 4 * qq : 4; /* channels of this quad that exist (1..4) */
        const int16_t *x0 = x + ((n * G + g) * (long)Cg + 4 * qq) * H * W;
        const long cs = (long)H * W;
        int32_t *o = out + t * (long)Hp * S * Wq;
        for (int r = 0; r < Hp; r++) {
            const int y = r - ph;
            for (int s = 0; s < S; s++) {
                int32_t *orow = o + ((long)r * S + s) * Wq;
                int qa, qb;
                row_span(s, S, pw, W, Wq, y, H, orow, &qa, &qb);
                if (qb == qa) continue;
                const int16_t *r0 = x0 + (long)y * W + s - pw;
                if (nk == 4 && S == 1) {
                    const int16_t *r1 = r0 + cs, *r2 = r1 + cs, *r3 = r2 + cs;
                    for (int q = qa; q < qb; q++)
                        orow[q] = (int32_t)((uint32_t)(uint8_t)r0[q] | (uint32_t)(uint8_t)r1[q] << 8
                                            | (uint32_t)(uint8_t)r2[q] << 16 | (uint32_t)(uint8_t)r3[q] << 24);
                } else {
                    for (int q = qa; q < qb; q++) {
                        uint32_t v = 0;
                        for (int k = 0; k < nk; k++) v |= (uint32_t)(uint8_t)r0[k * cs + (long)q * S] << (8 * k);
                        orow[q] = (int32_t)v;
                    }
                }
            }
        }
    }
    return 0;
}

/* Group sums of the quads layout (tasks: image x group). */
__attribute__((target("avx2"))) int ci8_group_sums4(const int32_t *x, int32_t *gsum, const struct i8geom *p,
                                                    long t0, long t1)
{
    const long plane = (long)p->Hp * p->S * p->Wq;
    for (long t = t0; t < t1; t++) {
        int32_t *o = gsum + t * plane;
        const uint32_t *xg = (const uint32_t *)x + t * p->P * plane;
        for (long q = 0; q < plane; q++) o[q] = 0;
        for (int c = 0; c < p->P; c++) {
            const uint32_t *xc = xg + c * plane;
            for (long q = 0; q < plane; q++)
                o[q] += (int32_t)((xc[q] & 0xff) + (xc[q] >> 8 & 0xff) + (xc[q] >> 16 & 0xff) + (xc[q] >> 24));
        }
    }
    return 0;
}

/* Quantize float32 x[t0..t1) to integers: y = x*st + off (double), clamp to [lo, hi], round to nearest (ties
 * to even, or away from zero) -- caffelite/jacinto/fixed_point.py's quantizer without the dequantization. */
int ci8_quantize(const float *x, double st, double off, double lo, double hi, int ties_away, int16_t *out,
                 long t0, long t1)
{
    for (long i = t0; i < t1; i++) {
        double v = (double)x[i] * st;
        v = v + off;
        out[i] = (int16_t)clip_round(v, lo, hi, ties_away);
    }
    return 0;
}

static struct PyModuleDef cint8_module = {PyModuleDef_HEAD_INIT, "_cint8",
                                          "Integer convolution kernels, called through ctypes.", -1, NULL};

PyMODINIT_FUNC PyInit__cint8(void) { return PyModule_Create(&cint8_module); }
