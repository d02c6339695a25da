/* The sparse kernel over quads of nonzero weights, u8 x s8 (vpdpbusd): included by cint8.c for AVX-512 VNNI.
 *
 * Like cint8_singles.h (same tasks, blocking and tables, struct i8pairs), but each output channel's nonzero
 * weights, in (channel, row, column) order, are grouped four by four whatever their channels and taps, the
 * input is planar uint8 (one plane per channel, laid out as ci8_pack16's int16 planes, pstride in bytes) and
 * the weights must fit int8: sp->off holds four offsets per quad, sp->w the four int8 weights of a quad (first
 * in the low byte; a short last quad gets zero weights reading its first input again). The four input vectors
 * of a quad (64 pixels each) are interleaved in registers (vpunpck{l,h}bw then {l,h}wd: accumulator k holds, in
 * each 128-bit lane L, pixels 16L+4k .. 16L+4k+3), and the accumulators are put back in pixel order (a 4x4
 * transpose of 128-bit lanes) before the epilogue. Integer sums are exact: grouping and order change nothing.
 *
 * Tasks, tiles (up to QS_NT vectors of 64 pixels), input blocks, window sums and the epilogue are the template
 * cint8_sparse_tile.h's. Needs Wo >= 64. A second instance (q12_run, at the end) takes weights wider than int8.
 */

/* acc += x . w (vpdpbusd) on acc's register in place: with the intrinsic, GCC 12 copied the 16 accumulators of
 * the 12-bit loop from register to register (and to the stack) on every iteration (A/B: 5-7% of a layer's time) */
#define QDP(acc, x, w) __asm__("vpdpbusd %2, %1, %0" : "+v"(acc) : "v"(x), "v"(w))
#ifndef QS_NT
#define QS_NT 2
#define QS_MAXBG 32
#endif

/* The four input pointers of quad k (both offsets of a pair in one load, little endian: the first in the low
 * half). */
TARGET static inline __attribute__((always_inline)) void FN(qs_inputs)(const uint8_t *xg, const int32_t *off, long k,
                                                                      const uint8_t **x)
{
    long long o01, o23;
    __builtin_memcpy(&o01, off + 4 * k, 8);
    __builtin_memcpy(&o23, off + 4 * k + 2, 8);
    x[0] = xg + (int32_t)o01, x[1] = xg + (o01 >> 32), x[2] = xg + (int32_t)o23, x[3] = xg + (o23 >> 32);
}

/* The 64 pixels at src of the four inputs x, interleaved for vpdpbusd: i[k] holds, in each 128-bit lane L, pixels
 * 16L+4k .. 16L+4k+3 of the four inputs in turn. */
TARGET static inline __attribute__((always_inline)) void FN(qs_interleave)(const uint8_t *const *x, long src,
                                                                          __m512i *i)
{
    const __m512i u0 = _mm512_loadu_si512((const void *)(x[0] + src));
    const __m512i u1 = _mm512_loadu_si512((const void *)(x[1] + src));
    const __m512i u2 = _mm512_loadu_si512((const void *)(x[2] + src));
    const __m512i u3 = _mm512_loadu_si512((const void *)(x[3] + src));
    const __m512i l01 = _mm512_unpacklo_epi8(u0, u1), h01 = _mm512_unpackhi_epi8(u0, u1);
    const __m512i l23 = _mm512_unpacklo_epi8(u2, u3), h23 = _mm512_unpackhi_epi8(u2, u3);
    i[0] = _mm512_unpacklo_epi16(l01, l23);
    i[1] = _mm512_unpackhi_epi16(l01, l23);
    i[2] = _mm512_unpacklo_epi16(h01, h23);
    i[3] = _mm512_unpackhi_epi16(h01, h23);
}

/* One output channel over T vectors and the quads [k0, k1): acc in (interleaved) register order. */
TARGET static inline __attribute__((always_inline)) void FN(qs_run)(
    const uint8_t *xg, const int32_t *off, const int32_t *w, long k0, long k1, const long *src0, __m512i *acc,
    const int T)
{
    __m512i a[4 * QS_NT];
#pragma GCC unroll 8
    for (int v = 0; v < 4 * T; v++) a[v] = acc[v];
    for (long k = k0; k < k1; k++) {
        const uint8_t *x[4];
        FN(qs_inputs)(xg, off, k, x);
        const __m512i wv = _mm512_set1_epi32(w[k]);
#pragma GCC unroll 2
        for (int v = 0; v < T; v++) {
            __m512i i[4];
            FN(qs_interleave)(x, src0[v], i);
#pragma GCC unroll 4
            for (int h = 0; h < 4; h++) QDP(a[4 * v + h], i[h], wv);
        }
    }
#pragma GCC unroll 8
    for (int v = 0; v < 4 * T; v++) acc[v] = a[v];
}

/* The four accumulators of a 64-pixel vector (accumulator k holds pixels 16L+4k .. 16L+4k+3 in 128-bit lane L)
 * in pixel order: a 4x4 transpose of 128-bit lanes. */
TARGET static inline __attribute__((always_inline)) void FN(qs_order)(const __m512i *q, __m512i *o)
{
    const __m512i t0 = _mm512_shuffle_i32x4(q[0], q[1], _MM_SHUFFLE(1, 0, 1, 0));
    const __m512i t1 = _mm512_shuffle_i32x4(q[2], q[3], _MM_SHUFFLE(1, 0, 1, 0));
    const __m512i t2 = _mm512_shuffle_i32x4(q[0], q[1], _MM_SHUFFLE(3, 2, 3, 2));
    const __m512i t3 = _mm512_shuffle_i32x4(q[2], q[3], _MM_SHUFFLE(3, 2, 3, 2));
    o[0] = _mm512_shuffle_i32x4(t0, t1, _MM_SHUFFLE(2, 0, 2, 0));
    o[1] = _mm512_shuffle_i32x4(t0, t1, _MM_SHUFFLE(3, 1, 3, 1));
    o[2] = _mm512_shuffle_i32x4(t2, t3, _MM_SHUFFLE(2, 0, 2, 0));
    o[3] = _mm512_shuffle_i32x4(t2, t3, _MM_SHUFFLE(3, 1, 3, 1));
}

#define SPT(x) FN(qs_##x)
#define SPT_T uint8_t
#define SPT_H 4
#define SPT_NT QS_NT
#define SPT_MAXBG QS_MAXBG
#define SPT_RUN FN(qs_run)
#define SPT_ORDER FN(qs_order)
#include "cint8_sparse_tile.h"

/* 12-bit weights on unsigned 8-bit inputs: each weight w (-4096..4095) as 32*hi + lo with hi in -128..127 and lo
 * in 0..31, a group holding two int8 quads on the same four inputs (w[2k] the four hi parts, w[2k+1] the four lo
 * parts), so that one set of loads and interleaves serves both; the sums are combined as 32*hi + lo at the end
 * (exact: int32, the caller bounds them). */
TARGET static inline __attribute__((always_inline)) void FN(q12_run)(
    const uint8_t *xg, const int32_t *off, const int32_t *w, long k0, long k1, const long *src0, __m512i *acc,
    const int T)
{
    __m512i hi[4 * QS_NT], lo[4 * QS_NT];
#pragma GCC unroll 8
    for (int v = 0; v < 4 * T; v++) hi[v] = lo[v] = _mm512_setzero_si512();
    for (long k = k0; k < k1; k++) {
        const uint8_t *x[4];
        FN(qs_inputs)(xg, off, k, x);
        const __m512i wh = _mm512_set1_epi32(w[2 * k]), wl = _mm512_set1_epi32(w[2 * k + 1]);
#pragma GCC unroll 2
        for (int v = 0; v < T; v++) {
            __m512i i[4];
            FN(qs_interleave)(x, src0[v], i);
#pragma GCC unroll 4
            for (int h = 0; h < 4; h++) {
                QDP(hi[4 * v + h], i[h], wh);
                QDP(lo[4 * v + h], i[h], wl);
            }
        }
    }
#pragma GCC unroll 8
    for (int v = 0; v < 4 * T; v++)
        acc[v] = _mm512_add_epi32(acc[v], _mm512_add_epi32(_mm512_slli_epi32(hi[v], 5), lo[v]));
}

#define SPT(x) FN(q12_##x)
#define SPT_T uint8_t
#define SPT_H 4
#define SPT_NT QS_NT
#define SPT_MAXBG QS_MAXBG
#define SPT_RUN FN(q12_run)
#define SPT_ORDER FN(qs_order)
#include "cint8_sparse_tile.h"
