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
 * Tasks: (image, p->rg output rows, p->bg <= QS_MAXBG output channels), tiles of up to QS_NT vectors of 64
 * pixels (a row's last vector ends at Wo and may overlap the previous one). Needs Wo >= 64.
 */

#ifndef QS_NT
#define QS_NT 2
#define QS_MAXBG 32
#endif

/* The window sums (int32, pixel order) of T vectors of 64 pixels starting at src0[v]. */
TARGET static inline __attribute__((always_inline)) void FN(qs_sums)(
    const int32_t *gs, const struct i8geom *p, const long *src0, int32_t s[][64], const int T)
{
    const long rowlen = (long)p->S * p->Wq;
    __m512i sa[4 * QS_NT];
#pragma GCC unroll 8
    for (int v = 0; v < 4 * T; v++) sa[v] = _mm512_setzero_si512();
    for (int i = 0; i < p->kh; i++) {
        const int32_t *row = gs + (long)i * p->dh * rowlen;
        for (int j = 0; j < p->kw; j++) {
#pragma GCC unroll 2
            for (int v = 0; v < T; v++) {
                const int32_t *q = row + p->tap_off[j] + src0[v];
#pragma GCC unroll 4
                for (int h = 0; h < 4; h++)
                    sa[4 * v + h] = _mm512_add_epi32(sa[4 * v + h], _mm512_loadu_si512((const void *)(q + 16 * h)));
            }
        }
    }
#pragma GCC unroll 2
    for (int v = 0; v < T; v++)
#pragma GCC unroll 4
        for (int h = 0; h < 4; h++) _mm512_storeu_si512((void *)(s[v] + 16 * h), sa[4 * v + h]);
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
        long long o01, o23;
        __builtin_memcpy(&o01, off + 4 * k, 8);
        __builtin_memcpy(&o23, off + 4 * k + 2, 8);
        const uint8_t *x0 = xg + (int32_t)o01, *x1 = xg + (o01 >> 32), *x2 = xg + (int32_t)o23, *x3 = xg + (o23 >> 32);
        const __m512i wv = _mm512_set1_epi32(w[k]);
#pragma GCC unroll 2
        for (int v = 0; v < T; v++) {
            const __m512i u0 = _mm512_loadu_si512((const void *)(x0 + src0[v]));
            const __m512i u1 = _mm512_loadu_si512((const void *)(x1 + src0[v]));
            const __m512i u2 = _mm512_loadu_si512((const void *)(x2 + src0[v]));
            const __m512i u3 = _mm512_loadu_si512((const void *)(x3 + src0[v]));
            const __m512i l01 = _mm512_unpacklo_epi8(u0, u1), h01 = _mm512_unpackhi_epi8(u0, u1);
            const __m512i l23 = _mm512_unpacklo_epi8(u2, u3), h23 = _mm512_unpackhi_epi8(u2, u3);
            a[4 * v] = _mm512_dpbusd_epi32(a[4 * v], _mm512_unpacklo_epi16(l01, l23), wv);
            a[4 * v + 1] = _mm512_dpbusd_epi32(a[4 * v + 1], _mm512_unpackhi_epi16(l01, l23), wv);
            a[4 * v + 2] = _mm512_dpbusd_epi32(a[4 * v + 2], _mm512_unpacklo_epi16(h01, h23), wv);
            a[4 * v + 3] = _mm512_dpbusd_epi32(a[4 * v + 3], _mm512_unpackhi_epi16(h01, h23), wv);
        }
    }
#pragma GCC unroll 8
    for (int v = 0; v < 4 * T; v++) acc[v] = a[v];
}

/* One pixel tile (T vectors at rows ys, columns xs) of the task's channels c0..c1 over every input block. */
TARGET static inline __attribute__((always_inline)) void FN(qs_tile)(
    const uint8_t *x, const int32_t *gsum, const struct i8pairs *sp, const struct i8epi *e, int16_t *out,
    const struct i8geom *p, long n, int c0, int c1, const int *ys, const int *xs, __m512i (*accbuf)[4 * QS_NT],
    const int T)
{
    const long plane = (long)p->Hp * p->S * p->Wq, rowlen = (long)p->S * p->Wq, hw = (long)p->Ho * p->Wo;
    const long nkb = sp->nkb;
    long src0[QS_NT];
#pragma GCC unroll 2
    for (int v = 0; v < T; v++) src0[v] = (long)ys[v] * p->sh * rowlen + xs[v];
    int32_t s[QS_NT][64];
    __m512d sd[QS_NT][8]; /* the window sums of group sg in double, 8 pixels each */
    for (int v = 0; v < QS_NT; v++) for (int h = 0; h < 8; h++) sd[v][h] = _mm512_setzero_pd();
    int sg = -1;
    for (long kb = 0; kb < nkb; kb++) {
        for (int m = c0; m < c1; m++) {
            const int g = m / p->Mg;
            const uint8_t *xg = x + (n * p->G + g) * (long)p->P * sp->pstride;
            __m512i acc[4 * QS_NT];
#pragma GCC unroll 8
            for (int v = 0; v < 4 * T; v++) acc[v] = kb ? accbuf[m - c0][v] : _mm512_setzero_si512();
            const long *kp = sp->kptr + (long)m * nkb + kb;
            FN(qs_run)(xg, sp->off, sp->w, kp[0], kp[1], src0, acc, T);
            if (kb + 1 < nkb) {
#pragma GCC unroll 8
                for (int v = 0; v < 4 * T; v++) accbuf[m - c0][v] = acc[v];
                continue;
            }
            if (g != sg) {
                if (p->has_sum) {
                    FN(qs_sums)(gsum + (n * p->G + g) * plane, p, src0, s, T);
                    for (int v = 0; v < T; v++)
                        for (int h = 0; h < 8; h++)
                            sd[v][h] = _mm512_cvtepi32_pd(_mm256_loadu_si256((const __m256i *)(s[v] + 8 * h)));
                }
                sg = g;
            }
            const __m512d va = _mm512_set1_pd(e->A[m]), vb = _mm512_set1_pd(e->B[m]), vc = _mm512_set1_pd(e->C[m]);
            int16_t *ob = out + (n * p->Cout + m) * hw;
#pragma GCC unroll 2
            for (int v = 0; v < T; v++) {
                int16_t *dst = ob + (long)ys[v] * p->Wo + xs[v];
                const __m512i *q = acc + 4 * v;
                const __m512i t0 = _mm512_shuffle_i32x4(q[0], q[1], _MM_SHUFFLE(1, 0, 1, 0));
                const __m512i t1 = _mm512_shuffle_i32x4(q[2], q[3], _MM_SHUFFLE(1, 0, 1, 0));
                const __m512i t2 = _mm512_shuffle_i32x4(q[0], q[1], _MM_SHUFFLE(3, 2, 3, 2));
                const __m512i t3 = _mm512_shuffle_i32x4(q[2], q[3], _MM_SHUFFLE(3, 2, 3, 2));
                FN(requant16d)(e, va, vb, vc, _mm512_shuffle_i32x4(t0, t1, _MM_SHUFFLE(2, 0, 2, 0)),
                               sd[v][0], sd[v][1], dst);
                FN(requant16d)(e, va, vb, vc, _mm512_shuffle_i32x4(t0, t1, _MM_SHUFFLE(3, 1, 3, 1)),
                               sd[v][2], sd[v][3], dst + 16);
                FN(requant16d)(e, va, vb, vc, _mm512_shuffle_i32x4(t2, t3, _MM_SHUFFLE(2, 0, 2, 0)),
                               sd[v][4], sd[v][5], dst + 32);
                FN(requant16d)(e, va, vb, vc, _mm512_shuffle_i32x4(t2, t3, _MM_SHUFFLE(3, 1, 3, 1)),
                               sd[v][6], sd[v][7], dst + 48);
            }
        }
    }
}

/* Tasks t0..t1: (image n, chunk of p->rg output rows, chunk of p->bg output channels). Needs Wo >= 64. */
TARGET static void FN(qsfwd)(const uint8_t *x, const int32_t *gsum, const struct i8pairs *sp, const struct i8epi *e,
                             int16_t *out, const struct i8geom *p, long t0, long t1)
{
    const int nrg = (p->Ho + p->rg - 1) / p->rg, ncg = (p->Cout + p->bg - 1) / p->bg;
    const int vrow = (p->Wo + 63) / 64;
    __m512i accbuf[QS_MAXBG][4 * QS_NT];
    for (long t = sp->next ? __atomic_fetch_add(sp->next, 1, __ATOMIC_RELAXED) : t0; t < t1;
         t = sp->next ? __atomic_fetch_add(sp->next, 1, __ATOMIC_RELAXED) : t + 1) {
        const long n = t / ((long)nrg * ncg);
        const int rgi = (int)(t / ncg % nrg), cgi = (int)(t % ncg);
        const int y0 = rgi * p->rg, y1 = y0 + p->rg < p->Ho ? y0 + p->rg : p->Ho;
        const int c0 = cgi * p->bg, c1 = c0 + p->bg < p->Cout ? c0 + p->bg : p->Cout;
        const int nvec = (y1 - y0) * vrow;
        int ys[QS_NT] = {0}, xs[QS_NT] = {0};
        for (int k = 0; k < nvec;) {
            const int T = nvec - k >= QS_NT ? QS_NT : 1;
            for (int v = 0; v < T; v++) {
                const int kv = k + v, r = kv % vrow;
                ys[v] = y0 + kv / vrow;
                xs[v] = r * 64 + 64 <= p->Wo ? r * 64 : p->Wo - 64;
            }
            if (T == QS_NT) FN(qs_tile)(x, gsum, sp, e, out, p, n, c0, c1, ys, xs, accbuf, QS_NT);
            else FN(qs_tile)(x, gsum, sp, e, out, p, n, c0, c1, ys, xs, accbuf, 1);
            k += T;
        }
    }
}
