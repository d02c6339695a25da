/* The sparse kernel over paired nonzero weights (included by cint8_kernel.h for the AVX-512 instruction sets).
 *
 * The pairs kernel (sfwd) multiplies fixed channel pairs (2c, 2c+1): at 80% zero weights a third of its pairs
 * still hold a nonzero, mostly a single one, so half its multiply-adds are by zero. Here each output channel's
 * nonzero weights, taken one by one in (channel, row, column) order, are paired in twos whatever their
 * channels and taps; the input is planar int16 (one plane per channel), and the two input vectors of a pair are
 * interleaved in registers (vpunpcklwd / vpunpckhwd: pixels 0-3, 8-11, ... in the low vector, 4-7, 12-15, ...
 * in the high one) before the pair multiply-add. The accumulators are put back in pixel order before the
 * epilogue. Integer sums are exact, so the pairing, the order and the blocking cannot change a result.
 *
 * Tasks, tiles (up to SS_NT vectors of 32 pixels), input blocks, window sums and the epilogue are the template
 * cint8_sparse_tile.h's. Layouts (ci8_pack16 in cint8.c builds x and gsum): x (N, G*Cg, sp->pstride) int16,
 * each plane (Hp, S, Wq) (p->P holds Cg here); gsum (N, G, Hp, S, Wq) int32 as for the other kernels; out
 * (N, Cout, Ho, Wo) int16.
 */

#ifndef SS_NT
#define SS_NT 2
#define SS_MAXBG 32
#endif

/* One output channel over T vectors and the pairs [k0, k1): acc in (interleaved) register order. */
TARGET static inline __attribute__((always_inline)) void FN(ss_run)(
    const int16_t *xg, const int32_t *off, const int32_t *w, long k0, long k1, const long *src0, __m512i *acc,
    const int T)
{
    __m512i a[2 * SS_NT];
#pragma GCC unroll 4
    for (int v = 0; v < 2 * T; v++) a[v] = acc[v];
    for (long k = k0; k < k1; k++) {
        long long o; /* both offsets in one load (little endian: the first in the low half): loads are what
                      * this loop waits on */
        __builtin_memcpy(&o, off + 2 * k, 8);
        const int16_t *x1 = xg + (int32_t)o, *x2 = xg + (o >> 32);
        const __m512i wv = _mm512_set1_epi32(w[k]);
#pragma GCC unroll 4
        for (int v = 0; v < T; v++) {
            const __m512i u = _mm512_loadu_si512((const void *)(x1 + src0[v]));
            const __m512i b = _mm512_loadu_si512((const void *)(x2 + src0[v]));
            a[2 * v] = VDOT2(a[2 * v], _mm512_unpacklo_epi16(u, b), wv);
            a[2 * v + 1] = VDOT2(a[2 * v + 1], _mm512_unpackhi_epi16(u, b), wv);
        }
    }
#pragma GCC unroll 4
    for (int v = 0; v < 2 * T; v++) acc[v] = a[v];
}

/* The two accumulators of a 32-pixel vector (pixels 0-3, 8-11, ... and 4-7, 12-15, ...) in pixel order. */
TARGET static inline __attribute__((always_inline)) void FN(ss_order)(const __m512i *q, __m512i *o)
{
    const __m512i idx0 = _mm512_setr_epi32(0, 1, 2, 3, 16, 17, 18, 19, 4, 5, 6, 7, 20, 21, 22, 23);
    const __m512i idx1 = _mm512_setr_epi32(8, 9, 10, 11, 24, 25, 26, 27, 12, 13, 14, 15, 28, 29, 30, 31);
    o[0] = _mm512_permutex2var_epi32(q[0], idx0, q[1]);
    o[1] = _mm512_permutex2var_epi32(q[0], idx1, q[1]);
}

#define SPT(x) FN(ss_##x)
#define SPT_T int16_t
#define SPT_H 2
#define SPT_NT SS_NT
#define SPT_MAXBG SS_MAXBG
#define SPT_RUN FN(ss_run)
#define SPT_ORDER FN(ss_order)
#include "cint8_sparse_tile.h"
