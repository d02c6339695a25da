/* One instantiation of the integer convolution kernel for one instruction set (included by cint8.c).
 *
 * Macros: VW int32 lanes per vector, NV most vectors per tile, FN(x) name suffix, TARGET function attribute,
 * VEC the vector type, VZERO, VLOAD(p) (unaligned), VSTORE(p, v), VBCAST(i32), VDOT2(acc, x, w): acc + the
 * sum of the two int16 x int16 products of each 32-bit lane.
 *
 * Layouts: x (N, G*P, Hp, S, Wq) int32 = two int16 channels (2p low half, 2p+1 high half) of one pixel;
 * wpk (G, nmb, P, kh, kw, MB) int32 = the same two channels' weights of output channel m; out (N, Cout, Ho, Wo)
 * int16. Integer sums are exact, so the tile order and the thread split cannot change a result.
 */

#if VW % 8 == 0
typedef double FN(dvec) __attribute__((vector_size(64)));
typedef long long FN(lvec) __attribute__((vector_size(64)));
typedef int32_t FN(ivec8) __attribute__((vector_size(32)));
typedef int16_t FN(hvec8) __attribute__((vector_size(16)));

/* requant() on 8 lanes at once: the same operations in the same order (selects instead of branches) */
TARGET static inline __attribute__((always_inline)) void FN(requant8)(
    const struct i8epi *e, double a, double b, double c, const int32_t *acc, const int32_t *s, int16_t *dst)
{
    FN(ivec8) ai, si;
    __builtin_memcpy(&ai, acc, 32);
    __builtin_memcpy(&si, s, 32);
    FN(dvec) v = __builtin_convertvector(ai, FN(dvec)) * a;
    v = v + __builtin_convertvector(si, FN(dvec)) * b;
    v = v + c;
    if (e->relu) {
        const FN(lvec) neg = v < 0.0;
        const FN(dvec) vs = v * e->slope;
        v = (FN(dvec))((neg & (FN(lvec))vs) | (~neg & (FN(lvec))v));
    }
    v = v + e->off;
    const FN(dvec) lo = (FN(dvec)){0} + e->lo, hi = (FN(dvec)){0} + e->hi;
    FN(lvec) m = v < lo;
    v = (FN(dvec))((m & (FN(lvec))lo) | (~m & (FN(lvec))v));
    m = v > hi;
    v = (FN(dvec))((m & (FN(lvec))hi) | (~m & (FN(lvec))v));
    FN(dvec) r = (v + 0x1.8p52) - 0x1.8p52;
    if (e->ties_away) {
        const FN(dvec) d = v - r, one = (FN(dvec)){0} + 1.0;
        const FN(lvec) up = (d == 0.5) & (v > 0.0), down = (d == -0.5) & (v < 0.0);
        r = r + (FN(dvec))(up & (FN(lvec))one);
        r = r - (FN(dvec))(down & (FN(lvec))one);
    }
    const FN(hvec8) rh = __builtin_convertvector(r, FN(hvec8));
    __builtin_memcpy(dst, &rh, 16);
}
#endif

/* The epilogue of one output channel's T vectors: window sums from the group-sum image (when SUM), then
 * requant into int16 rows. */
TARGET static inline __attribute__((always_inline)) void FN(window_sums)(
    const int32_t *gs, const struct i8geom *p, const long *src0, int32_t s[][VW], const int T, const int SUM)
{
    const long rowlen = (long)p->S * p->Wq;
    VEC sacc[NV];
#pragma GCC unroll 8
    for (int v = 0; v < T; v++) sacc[v] = VZERO;
    if (SUM) {
        for (int i = 0; i < p->kh; i++) {
            const int32_t *row = gs + (long)i * p->dh * rowlen;
            for (int j = 0; j < p->kw; j++) {
#pragma GCC unroll 8
                for (int v = 0; v < T; v++) sacc[v] = VADD(sacc[v], VLOAD(row + p->tap_off[j] + src0[v]));
            }
        }
    }
#pragma GCC unroll 8
    for (int v = 0; v < T; v++) VSTORE(s[v], sacc[v]);
}

#ifdef EPI512
/* requant() on 8 lanes with AVX-512, from v = (A*acc + B*s) + C to int32. The same operations in the same order,
 * except where only the sign of a zero can differ, which no integer shows: relu with slope 0 is max(v, 0) (v*0
 * is -0 where max gives +0), and is left out when off is 0 and lo >= 0 (the clamp then does it), off 0 is not
 * added, and without ties away the rounding is the conversion's own (embedded round to nearest even, whatever
 * MXCSR says). */
TARGET static inline __attribute__((always_inline)) __m256i FN(rq8)(
    const struct i8epi *e, __m512d v, __m512d lo, __m512d hi)
{
    if (e->relu && !(e->slope == 0.0 && e->off == 0.0 && e->lo >= 0.0)) {
        if (e->slope == 0.0) v = _mm512_max_pd(v, _mm512_setzero_pd());
        else v = _mm512_mask_mul_pd(v, _mm512_cmp_pd_mask(v, _mm512_setzero_pd(), _CMP_LT_OQ), v,
                                    _mm512_set1_pd(e->slope));
    }
    if (e->off != 0.0) v = _mm512_add_pd(v, _mm512_set1_pd(e->off));
    v = _mm512_max_pd(v, lo);
    v = _mm512_min_pd(v, hi);
    if (!e->ties_away) return _mm512_cvt_roundpd_epi32(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512d r = _mm512_roundscale_pd(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const __m512d d = _mm512_sub_pd(v, r), one = _mm512_set1_pd(1.0);
    const __mmask8 up = _mm512_cmp_pd_mask(d, _mm512_set1_pd(0.5), _CMP_EQ_OQ)
                        & _mm512_cmp_pd_mask(v, _mm512_setzero_pd(), _CMP_GT_OQ);
    const __mmask8 down = _mm512_cmp_pd_mask(d, _mm512_set1_pd(-0.5), _CMP_EQ_OQ)
                          & _mm512_cmp_pd_mask(v, _mm512_setzero_pd(), _CMP_LT_OQ);
    r = _mm512_mask_add_pd(r, up, r, one);
    r = _mm512_mask_sub_pd(r, down, r, one);
    return _mm512_cvtpd_epi32(r); /* exact: r is an integer */
}

/* 16 integers r to int16 at dst, or, when dst8 is not NULL, to uint8 at dst8 (r in 0..255: the next convolution's
 * planar input) */
TARGET static inline __attribute__((always_inline)) void FN(store16)(__m512i r, int16_t *dst, uint8_t *dst8)
{
    if (dst8) _mm_storeu_si128((__m128i *)dst8, _mm512_cvtepi32_epi8(r));
    else _mm256_storeu_si256((__m256i *)dst, _mm512_cvtepi32_epi16(r));
}

/* 16 lanes: acc (int32) and the window sums already in double (s0: lanes 0-7, s1: 8-15) -> int16 at dst (or uint8
 * at dst8, FN(store16)) */
TARGET static inline __attribute__((always_inline)) void FN(requant16d)(
    const struct i8epi *e, __m512d va, __m512d vb, __m512d vc, __m512i acc, __m512d s0, __m512d s1, int16_t *dst,
    uint8_t *dst8)
{
    const __m512d lo = _mm512_set1_pd(e->lo), hi = _mm512_set1_pd(e->hi);
    __m512d v0 = _mm512_mul_pd(_mm512_cvtepi32_pd(_mm512_castsi512_si256(acc)), va);
    __m512d v1 = _mm512_mul_pd(_mm512_cvtepi32_pd(_mm512_extracti64x4_epi64(acc, 1)), va);
    v0 = _mm512_add_pd(v0, _mm512_mul_pd(s0, vb));
    v1 = _mm512_add_pd(v1, _mm512_mul_pd(s1, vb));
    const __m256i r0 = FN(rq8)(e, _mm512_add_pd(v0, vc), lo, hi);
    const __m256i r1 = FN(rq8)(e, _mm512_add_pd(v1, vc), lo, hi);
    FN(store16)(_mm512_inserti64x4(_mm512_castsi256_si512(r0), r1, 1), dst, dst8);
}

/* requant16d's integers through float32 where that provably gives the same ones (e->fast: no relu step, off 0):
 * v = fma(FA, acc, u) with u = fma(FB, s, FC) (s the window sums, or u = FC without them), clipped to [lo, hi].
 * When every lane lies nearer its nearest integer than ft (FT[m]: 0.5 less a bound on how far v may be from the
 * double value), the double value rounds to that same integer whatever the tie rule: the 16 integers are stored
 * and it returns 0; else nothing is stored and the caller takes the double path. Clipping first is safe: a lane
 * below lo (above hi) is then below lo + 0.5 (above hi - 0.5) in double too. */
TARGET static inline __attribute__((always_inline)) int FN(requant16f)(
    __m512 fa, __m512 u, __m512 ft, __m512 flo, __m512 fhi, __m512i acc, int16_t *dst, uint8_t *dst8)
{
    __m512 v = _mm512_fmadd_ps(_mm512_cvtepi32_ps(acc), fa, u);
    v = _mm512_min_ps(_mm512_max_ps(v, flo), fhi);
    const __m512 r = _mm512_roundscale_ps(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    if (_mm512_cmp_ps_mask(_mm512_abs_ps(_mm512_sub_ps(v, r)), ft, _CMP_NLT_UQ)) return 1;
    FN(store16)(_mm512_cvtps_epi32(r), dst, dst8); /* exact: r integral */
    return 0;
}

TARGET static inline __attribute__((always_inline)) void FN(requant16)(
    const struct i8epi *e, double a, double b, double c, __m512i acc, const int32_t *s, int16_t *dst)
{
    const __m512i si = _mm512_loadu_si512((const void *)s);
    FN(requant16d)(e, _mm512_set1_pd(a), _mm512_set1_pd(b), _mm512_set1_pd(c), acc,
                   _mm512_cvtepi32_pd(_mm512_castsi512_si256(si)), _mm512_cvtepi32_pd(_mm512_extracti64x4_epi64(si, 1)),
                   dst, NULL);
}
#endif

TARGET static inline __attribute__((always_inline)) void FN(store)(
    const struct i8epi *e, const struct i8geom *p, int m, VEC acc, const int32_t *s, int16_t *dst)
{
    const double a = e->A[m], b = e->B[m], cc = e->C[m];
#ifdef EPI512
    FN(requant16)(e, a, b, cc, acc, s, dst);
    (void)p;
    return;
#endif
    int32_t t[VW];
    VSTORE(t, acc);
#if VW % 8 == 0
    for (int l = 0; l < VW; l += 8) FN(requant8)(e, a, b, cc, t + l, s + l, dst + l);
#else
    for (int l = 0; l < VW; l++) dst[l] = requant(e, a, b, cc, t[l], s[l]);
#endif
    (void)p;
}

TARGET static inline __attribute__((always_inline)) void FN(tile)(
    const int32_t *xg, const int32_t *gs, const int32_t *wb, const struct i8epi *e, int16_t *ob,
    const struct i8geom *p, const int *ys, const int *xs, int m0, int mvalid, const int T, const int SUM)
{
    VEC acc[MB][NV];
    long src0[NV];
    const long rowlen = (long)p->S * p->Wq;
    const long ostride = (long)p->Ho * p->Wo;
#pragma GCC unroll 8
    for (int v = 0; v < T; v++) src0[v] = (long)ys[v] * p->sh * rowlen + xs[v];
#pragma GCC unroll 64
    for (int m = 0; m < MB; m++)
#pragma GCC unroll 8
        for (int v = 0; v < T; v++) acc[m][v] = VZERO;
    for (int c = 0; c < p->P; c++) {
        for (int i = 0; i < p->kh; i++) {
            const int32_t *row = xg + ((long)c * p->Hp + (long)i * p->dh) * rowlen;
            const int32_t *wp = wb + ((long)(c * p->kh + i) * p->kw) * MB;
            for (int j = 0; j < p->kw; j++, wp += MB) {
                const int32_t *src = row + p->tap_off[j];
                VEC xv[NV];
#pragma GCC unroll 8
                for (int v = 0; v < T; v++) xv[v] = VLOAD(src + src0[v]);
#pragma GCC unroll 64
                for (int m = 0; m < MB; m++) {
                    const VEC wv = VBCAST(wp[m]);
#pragma GCC unroll 8
                    for (int v = 0; v < T; v++) acc[m][v] = VDOT2(acc[m][v], xv[v], wv);
                }
            }
        }
    }
    int32_t s[NV][VW];
    FN(window_sums)(gs, p, src0, s, T, SUM);
    for (int m = 0; m < mvalid; m++)
        for (int v = 0; v < T; v++)
            FN(store)(e, p, m0 + m, acc[m][v], s[v], ob + m * ostride + (long)ys[v] * p->Wo + xs[v]);
}

#ifndef QUADS
/* Sparse: one output channel, T vectors, only its nonzero weight pairs (input offsets relative to the group's
 * input, precomputed). One load per multiply-add, so it wins only when most pairs are zero. */
TARGET static inline __attribute__((always_inline)) void FN(stile)(
    const int32_t *xg, const int32_t *gs, const long *off, const int32_t *w, long nnz, const struct i8epi *e,
    int16_t *ob, const struct i8geom *p, const int *ys, const int *xs, int m, const int T, const int SUM)
{
    VEC acc[NVS];
    long src0[NVS];
    const long rowlen = (long)p->S * p->Wq;
#pragma GCC unroll 8
    for (int v = 0; v < T; v++) {
        src0[v] = (long)ys[v] * p->sh * rowlen + xs[v];
        acc[v] = VZERO;
    }
    for (long k = 0; k < nnz; k++) {
        const int32_t *src = xg + off[k];
        const VEC wv = VBCAST(w[k]);
#pragma GCC unroll 8
        for (int v = 0; v < T; v++) acc[v] = VDOT2(acc[v], VLOAD(src + src0[v]), wv);
    }
    int32_t s[NVS][VW];
    if (SUM) {
        for (int v = 0; v < T; v++) FN(window_sums)(gs, p, src0 + v, s + v, 1, 1);
    } else {
        for (int v = 0; v < T; v++) for (int l = 0; l < VW; l++) s[v][l] = 0;
    }
    for (int v = 0; v < T; v++) FN(store)(e, p, m, acc[v], s[v], ob + (long)ys[v] * p->Wo + xs[v]);
}

/* Sparse tasks t0..t1: (image n, chunk of p->rg output rows, chunk of p->bg output channels). */
TARGET static void FN(sfwd)(const int32_t *x, const int32_t *gsum, const struct i8sparse *sp, const struct i8epi *e,
                            int16_t *out, const struct i8geom *p, long t0, long t1)
{
    const int nrg = (p->Ho + p->rg - 1) / p->rg, ncg = (p->Cout + p->bg - 1) / p->bg;
    const long plane = (long)p->Hp * p->S * p->Wq;
    const int vrow = (p->Wo + VW - 1) / VW;
    for (long t = t0; t < t1; t++) {
        const long n = t / ((long)nrg * ncg);
        const int rgi = (int)(t / ncg % nrg), cgi = (int)(t % ncg);
        const int y0 = rgi * p->rg, y1 = y0 + p->rg < p->Ho ? y0 + p->rg : p->Ho;
        const int c0 = cgi * p->bg, c1 = c0 + p->bg < p->Cout ? c0 + p->bg : p->Cout;
        const int nvec = (y1 - y0) * vrow;
        for (int m = c0; m < c1; m++) {
            const int g = m / p->Mg;
            const int32_t *xg = x + (n * (long)p->G * p->P + (long)g * p->P) * plane;
            const int32_t *gs = gsum ? gsum + (n * p->G + g) * plane : NULL;
            const long k0 = sp->ptr[m], nnz = sp->ptr[m + 1] - k0;
            int16_t *ob = out + (n * p->Cout + m) * (long)p->Ho * p->Wo;
            int ys[NVS] = {0}, xs[NVS] = {0};
            for (int k = 0; k < nvec;) {
                const int T = nvec - k >= NVS ? NVS : nvec - k;
                for (int v = 0; v < T; v++) {
                    const int kv = k + v, r = kv % vrow;
                    ys[v] = y0 + kv / vrow;
                    xs[v] = r * VW + VW <= p->Wo ? r * VW : p->Wo - VW;
                }
                if (T == NVS) {
                    if (p->has_sum) FN(stile)(xg, gs, sp->off + k0, sp->w + k0, nnz, e, ob, p, ys, xs, m, NVS, 1);
                    else FN(stile)(xg, gs, sp->off + k0, sp->w + k0, nnz, e, ob, p, ys, xs, m, NVS, 0);
                } else {
                    for (int v = 0; v < T; v++) {
                        if (p->has_sum) FN(stile)(xg, gs, sp->off + k0, sp->w + k0, nnz, e, ob, p, ys + v, xs + v, m, 1, 1);
                        else FN(stile)(xg, gs, sp->off + k0, sp->w + k0, nnz, e, ob, p, ys + v, xs + v, m, 1, 0);
                    }
                }
                k += T;
            }
        }
    }
}

/* Group sums: gsum (N, G, Hp, S, Wq) = the sum over the group's channels of the packed input (both halves of
 * each pair), for the window sums of the weight zero-point correction. Tasks t0..t1 are (image, group). */
TARGET static void FN(gsum)(const int32_t *x, int32_t *gsum, const struct i8geom *p, long t0, long t1)
{
    const long plane = (long)p->Hp * p->S * p->Wq;
    for (long t = t0; t < t1; t++) {
        int32_t *o = gsum + t * plane;
        const int32_t *xg = x + t * p->P * plane;
        for (long q = 0; q < plane; q++) o[q] = 0;
        for (int c = 0; c < p->P; c++) {
            const int32_t *xc = xg + c * plane;
            for (long q = 0; q < plane; q++) o[q] += (int32_t)(int16_t)(xc[q] & 0xffff) + (xc[q] >> 16);
        }
    }
}

#endif

/* Tasks t0..t1: a task is (image n, a chunk of p->rg output rows, a chunk of p->bg channel blocks (g, b)). The
 * chunk's pixels are covered by VW-wide vectors row by row; a row's last vector ends at Wo (it may overlap the
 * previous one: the overlapped pixels get the same value twice). */
TARGET static void FN(fwd)(const int32_t *x, const int32_t *gsum, const int32_t *wpk, const struct i8epi *e,
                           int16_t *out, const struct i8geom *p, long t0, long t1)
{
    const int nblk = p->G * p->nmb;
    const int nrg = (p->Ho + p->rg - 1) / p->rg, nbg = (nblk + p->bg - 1) / p->bg;
    const long wblock = (long)p->P * p->kh * p->kw * MB;
    const long plane = (long)p->Hp * p->S * p->Wq;
    const int vrow = (p->Wo + VW - 1) / VW;
    for (long t = t0; t < t1; t++) {
        const long n = t / ((long)nrg * nbg);
        const int rgi = (int)(t / nbg % nrg), bgi = (int)(t % nbg);
        const int y0 = rgi * p->rg, y1 = y0 + p->rg < p->Ho ? y0 + p->rg : p->Ho;
        const int b0 = bgi * p->bg, b1 = b0 + p->bg < nblk ? b0 + p->bg : nblk;
        const int nvec = (y1 - y0) * vrow;
        for (int gb = b0; gb < b1; gb++) {
            const int g = gb / p->nmb, b = gb % p->nmb;
            const int m0 = g * p->Mg + b * MB;
            const int mvalid = p->Mg - b * MB < MB ? p->Mg - b * MB : MB;
            const int32_t *wb = wpk + gb * wblock;
            const int32_t *xg = x + (n * (long)p->G * p->P + (long)g * p->P) * plane;
            const int32_t *gs = gsum ? gsum + (n * p->G + g) * plane : NULL;
            int16_t *ob = out + (n * p->Cout + m0) * (long)p->Ho * p->Wo;
            int ys[NV] = {0}, xs[NV] = {0};
            for (int k = 0; k < nvec;) {
                const int left = nvec - k;
                const int T = left >= NV ? NV : left;
                for (int v = 0; v < T; v++) {
                    const int kv = k + v, r = kv % vrow;
                    ys[v] = y0 + kv / vrow;
                    xs[v] = r * VW + VW <= p->Wo ? r * VW : p->Wo - VW;
                }
                if (p->has_sum) {
                    if (T == NV) FN(tile)(xg, gs, wb, e, ob, p, ys, xs, m0, mvalid, NV, 1);
                    else if (NV >= 2 && T == 2) FN(tile)(xg, gs, wb, e, ob, p, ys, xs, m0, mvalid, NV >= 2 ? 2 : 1, 1);
                    else FN(tile)(xg, gs, wb, e, ob, p, ys, xs, m0, mvalid, 1, 1);
                } else {
                    if (T == NV) FN(tile)(xg, gs, wb, e, ob, p, ys, xs, m0, mvalid, NV, 0);
                    else if (NV >= 2 && T == 2) FN(tile)(xg, gs, wb, e, ob, p, ys, xs, m0, mvalid, NV >= 2 ? 2 : 1, 0);
                    else FN(tile)(xg, gs, wb, e, ob, p, ys, xs, m0, mvalid, 1, 0);
                }
                k += T;
            }
        }
    }
}

#if defined(EPI512) && !defined(QUADS)
#include "cint8_singles.h"
#endif

#ifndef QUADS
/* ci8_pack's body (cint8.c): per output row, the zero columns on both sides and the interleaving loop between. */
TARGET static void FN(pack)(const int16_t *x, int G, int Cg, int H, int W, int P, int Hp, int S, int Wq, int ph,
                            int pw, int32_t *out, long t0, long t1)
{
    for (long t = t0; t < t1; t++) {
        const long n = t / ((long)G * P);
        const int g = (int)(t / P % G), pp = (int)(t % P);
        const int c0 = 2 * pp, c1 = 2 * pp + 1;
        const int16_t *x0 = x + ((n * G + g) * (long)Cg + c0) * H * W;
        const int16_t *x1 = c1 < Cg ? x0 + (long)H * W : NULL;
        int32_t *o = out + t * (long)Hp * S * Wq;
        for (int r = 0; r < Hp; r++) {
            const int y = r - ph;
            for (int s = 0; s < S; s++) {
                int32_t *orow = o + ((long)r * S + s) * Wq;
                int qa, qb;
                row_span(s, S, pw, W, Wq, y, H, orow, &qa, &qb);
                if (qb == qa) continue;
                const int16_t *r0 = x0 + (long)y * W + s - pw;
                if (x1) {
                    const int16_t *r1 = x1 + (long)y * W + s - pw;
                    if (S == 1) {
                        for (int q = qa; q < qb; q++) orow[q] = (int32_t)((uint32_t)(uint16_t)r0[q] | (uint32_t)(uint16_t)r1[q] << 16);
                    } else {
                        for (int q = qa; q < qb; q++)
                            orow[q] = (int32_t)((uint32_t)(uint16_t)r0[q * S] | (uint32_t)(uint16_t)r1[q * S] << 16);
                    }
                } else {
                    for (int q = qa; q < qb; q++) orow[q] = (int32_t)(uint32_t)(uint16_t)r0[q * S];
                }
            }
        }
    }
}
#endif
