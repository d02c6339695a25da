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
 * Blocking: a task is (image, p->rg output rows, p->bg <= SS_MAXBG output channels); its pixels are covered by
 * tiles of up to SS_NT vectors of 32 pixels (a row's last vector ends at Wo and may overlap the previous one);
 * the input channels are cut into sp->nkb blocks (the pairs of a channel never straddle two), so that a block's
 * input rows stay in L1 while every channel of the task runs over it; partial sums wait in acc between blocks.
 *
 * Tasks go to whichever thread is free (sp->next): the integers do not depend on who computes a task.
 *
 * Layouts (ci8_pack16 in cint8.c builds x and gsum): x (N, G*Cg, sp->pstride) int16, each plane (Hp, S, Wq)
 * (p->P holds Cg here); gsum (N, G, Hp, S, Wq) int32 as for the other kernels; out (N, Cout, Ho, Wo) int16.
 */

#ifndef SS_NT
#define SS_NT 2
#define SS_MAXBG 32

struct i8pairs {
    const long *kptr;      /* (Cout*nkb + 1): channel m's pairs in input block kb are [kptr[m*nkb+kb], ...+1) */
    const int32_t *off;    /* (npairs, 2) offsets of the two inputs, int16 units from the group's first plane */
    const int32_t *w;      /* (npairs) the two int16 weights (first low, second high) */
    long nkb;
    long pstride;          /* int16 elements from one input plane to the next (>= Hp*S*Wq) */
    long *next;            /* NULL: run tasks t0..t1; else every caller takes the next task from *next (atomic)
                            * until t1, so that a thread slowed down by another process holds no one up */
};
#endif

/* The window sums (int32, pixel order) of T vectors of 32 pixels starting at src0[v] (int16/int32 index). */
TARGET static inline __attribute__((always_inline)) void FN(ss_sums)(
    const int32_t *gs, const struct i8geom *p, const long *src0, int32_t s[][32], const int T)
{
    const long rowlen = (long)p->S * p->Wq;
    __m512i sa[2 * SS_NT];
#pragma GCC unroll 4
    for (int v = 0; v < 2 * T; v++) sa[v] = _mm512_setzero_si512();
    for (int i = 0; i < p->kh; i++) {
        const int32_t *row = gs + (long)i * p->dh * rowlen;
        for (int j = 0; j < p->kw; j++) {
#pragma GCC unroll 4
            for (int v = 0; v < T; v++) {
                const int32_t *q = row + p->tap_off[j] + src0[v];
                sa[2 * v] = _mm512_add_epi32(sa[2 * v], _mm512_loadu_si512((const void *)q));
                sa[2 * v + 1] = _mm512_add_epi32(sa[2 * v + 1], _mm512_loadu_si512((const void *)(q + 16)));
            }
        }
    }
#pragma GCC unroll 4
    for (int v = 0; v < T; v++) {
        _mm512_storeu_si512((void *)s[v], sa[2 * v]);
        _mm512_storeu_si512((void *)(s[v] + 16), sa[2 * v + 1]);
    }
}

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

/* One pixel tile (T vectors at rows ys, columns xs) of the task's channels c0..c1 over every input block. */
TARGET static inline __attribute__((always_inline)) void FN(ss_tile)(
    const int16_t *x, const int32_t *gsum, const struct i8pairs *sp, const struct i8epi *e, int16_t *out,
    const struct i8geom *p, long n, int c0, int c1, const int *ys, const int *xs, __m512i (*accbuf)[2 * SS_NT],
    const int T)
{
    const long plane = (long)p->Hp * p->S * p->Wq, rowlen = (long)p->S * p->Wq, hw = (long)p->Ho * p->Wo;
    const long nkb = sp->nkb;
    long src0[SS_NT];
#pragma GCC unroll 4
    for (int v = 0; v < T; v++) src0[v] = (long)ys[v] * p->sh * rowlen + xs[v];
    const __m512i idx0 = _mm512_setr_epi32(0, 1, 2, 3, 16, 17, 18, 19, 4, 5, 6, 7, 20, 21, 22, 23);
    const __m512i idx1 = _mm512_setr_epi32(8, 9, 10, 11, 24, 25, 26, 27, 12, 13, 14, 15, 28, 29, 30, 31);
    int32_t s[SS_NT][32];
    __m512d sd[SS_NT][4]; /* the window sums of group sg in double, 8 pixels each */
    for (int v = 0; v < SS_NT; v++) for (int h = 0; h < 4; h++) sd[v][h] = _mm512_setzero_pd();
    int sg = -1;
    for (long kb = 0; kb < nkb; kb++) {
        for (int m = c0; m < c1; m++) {
            const int g = m / p->Mg;
            const int16_t *xg = x + (n * p->G + g) * (long)p->P * sp->pstride;
            __m512i acc[2 * SS_NT];
#pragma GCC unroll 4
            for (int v = 0; v < 2 * T; v++) acc[v] = kb ? accbuf[m - c0][v] : _mm512_setzero_si512();
            const long *kp = sp->kptr + (long)m * nkb + kb;
            FN(ss_run)(xg, sp->off, sp->w, kp[0], kp[1], src0, acc, T);
            if (kb + 1 < nkb) {
#pragma GCC unroll 4
                for (int v = 0; v < 2 * T; v++) accbuf[m - c0][v] = acc[v];
                continue;
            }
            if (g != sg) {
                if (p->has_sum) {
                    FN(ss_sums)(gsum + (n * p->G + g) * plane, p, src0, s, T);
                    for (int v = 0; v < T; v++)
                        for (int h = 0; h < 4; h++)
                            sd[v][h] = _mm512_cvtepi32_pd(_mm256_loadu_si256((const __m256i *)(s[v] + 8 * h)));
                }
                sg = g;
            }
            const __m512d va = _mm512_set1_pd(e->A[m]), vb = _mm512_set1_pd(e->B[m]), vc = _mm512_set1_pd(e->C[m]);
            int16_t *ob = out + (n * p->Cout + m) * hw;
#pragma GCC unroll 4
            for (int v = 0; v < T; v++) {
                int16_t *dst = ob + (long)ys[v] * p->Wo + xs[v];
                FN(requant16d)(e, va, vb, vc, _mm512_permutex2var_epi32(acc[2 * v], idx0, acc[2 * v + 1]),
                               sd[v][0], sd[v][1], dst);
                FN(requant16d)(e, va, vb, vc, _mm512_permutex2var_epi32(acc[2 * v], idx1, acc[2 * v + 1]),
                               sd[v][2], sd[v][3], dst + 16);
            }
        }
    }
}

/* Tasks t0..t1: (image n, chunk of p->rg output rows, chunk of p->bg output channels). Needs Wo >= 32. */
TARGET static void FN(ssfwd)(const int16_t *x, const int32_t *gsum, const struct i8pairs *sp, const struct i8epi *e,
                             int16_t *out, const struct i8geom *p, long t0, long t1)
{
    const int nrg = (p->Ho + p->rg - 1) / p->rg, ncg = (p->Cout + p->bg - 1) / p->bg;
    const int vrow = (p->Wo + 31) / 32;
    __m512i accbuf[SS_MAXBG][2 * SS_NT];
    for (long t = sp->next ? __atomic_fetch_add(sp->next, 1, __ATOMIC_RELAXED) : t0; t < t1;
         t = sp->next ? __atomic_fetch_add(sp->next, 1, __ATOMIC_RELAXED) : t + 1) {
        const long n = t / ((long)nrg * ncg);
        const int rgi = (int)(t / ncg % nrg), cgi = (int)(t % ncg);
        const int y0 = rgi * p->rg, y1 = y0 + p->rg < p->Ho ? y0 + p->rg : p->Ho;
        const int c0 = cgi * p->bg, c1 = c0 + p->bg < p->Cout ? c0 + p->bg : p->Cout;
        const int nvec = (y1 - y0) * vrow;
        int ys[SS_NT] = {0}, xs[SS_NT] = {0};
        for (int k = 0; k < nvec;) {
            const int T = nvec - k >= SS_NT ? SS_NT : 1;
            for (int v = 0; v < T; v++) {
                const int kv = k + v, r = kv % vrow;
                ys[v] = y0 + kv / vrow;
                xs[v] = r * 32 + 32 <= p->Wo ? r * 32 : p->Wo - 32;
            }
            if (T == SS_NT) FN(ss_tile)(x, gsum, sp, e, out, p, n, c0, c1, ys, xs, accbuf, SS_NT);
            else FN(ss_tile)(x, gsum, sp, e, out, p, n, c0, c1, ys, xs, accbuf, 1);
            k += T;
        }
    }
}
