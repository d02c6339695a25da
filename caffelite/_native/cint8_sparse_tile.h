/* What the AVX-512 sparse kernels over grouped nonzero weights share: tasks, pixel tiles, input-channel blocks,
 * window sums and the epilogue. A template, included once per kernel (cint8_singles.h: pairs of int16 weights,
 * cint8_quads.h: quads of int8 weights) after it defines
 *
 *   SPT(x)       the kernel's function names (e.g. FN(ss_##x)),
 *   SPT_T        the input element type (int16_t or uint8_t planes, laid out as ci8_pack16's),
 *   SPT_H        accumulators per tile vector, each of 16 int32 pixels (a tile vector is 16 * SPT_H pixels),
 *   SPT_NT       tile vectors per tile, SPT_MAXBG: output channels per task at most,
 *   SPT_RUN      its multiply-add loop, run(xg, off, w, k0, k1, src0, acc, T): one output channel over T tile
 *                vectors and the weight groups [k0, k1), acc in the loop's (interleaved) register order,
 *   SPT_ORDER    order(q, o): the SPT_H accumulators q of one tile vector into pixel order o (16 pixels each),
 *
 * and it defines SPT(sums), SPT(tile) and SPT(fwd). Blocking: a task is (image, p->rg output rows, p->bg <=
 * SPT_MAXBG output channels); its pixels are covered by tiles of up to SPT_NT vectors (a row's last vector ends
 * at Wo and may overlap the previous one); the input channels are cut into sp->nkb blocks (a group of weights
 * never straddles two), so that a block's input rows stay in L1 while every channel of the task runs over it;
 * partial sums wait in a per-task buffer between blocks. Tasks go to whichever thread is free (sp->next): the
 * integers do not depend on who computes a task. Needs Wo >= 16 * SPT_H.
 */

#ifndef CINT8_SPARSE_TILE_ONCE
#define CINT8_SPARSE_TILE_ONCE
struct i8pairs {
    const long *kptr;      /* (Cout*nkb + 1): channel m's weight groups in input block kb are [kptr[m*nkb+kb],
                            * kptr[m*nkb+kb+1]) */
    const int32_t *off;    /* per group, the offsets of its inputs (elements from the group's first plane) */
    const int32_t *w;      /* per group, its weights packed in one int32 (the first in the low bits) */
    long nkb;
    long pstride;          /* elements from one input plane to the next (>= Hp*S*Wq) */
    long *next;            /* NULL: run tasks t0..t1; else every caller takes the next task from *next (atomic)
                            * until t1, so that a thread slowed down by another process holds no one up */
    const int32_t *acc_off; /* NULL, or per output channel what the input's offset added to its sums (the quads
                             * kernels take signed 8-bit input as x + 128: acc_off[m] = 128 * sum of channel m's
                             * weights), subtracted before the epilogue */
    long s_off;            /* and what it added to each window sum (128 * inputs per window) */
    uint8_t *pk;           /* NULL: the output is int16 (N, Cout, Ho, Wo) at out; else uint8 (0..255 outputs) written
                            * straight into the next convolution's planar input: channel m's plane at
                            * pk + (n * Cout + m) * pk_ps, output (y, x) at pk_off + y * pk_row + x */
    long pk_ps, pk_row, pk_off;
};
#endif

#define SPT_VPIX (16 * SPT_H)

/* The window sums (int32, pixel order) of T tile vectors starting at src0[v]. */
TARGET static inline __attribute__((always_inline)) void SPT(sums)(
    const int32_t *gs, const struct i8geom *p, const long *src0, int32_t s[][SPT_VPIX], const int T)
{
    const long rowlen = (long)p->S * p->Wq;
    __m512i sa[SPT_H * SPT_NT];
#pragma GCC unroll 8
    for (int v = 0; v < SPT_H * T; v++) sa[v] = _mm512_setzero_si512();
    for (int i = 0; i < p->kh; i++) {
        const int32_t *row = gs + (long)i * p->dh * rowlen;
        for (int j = 0; j < p->kw; j++) {
#pragma GCC unroll 2
            for (int v = 0; v < T; v++) {
                const int32_t *q = row + p->tap_off[j] + src0[v];
#pragma GCC unroll 4
                for (int h = 0; h < SPT_H; h++)
                    sa[SPT_H * v + h] = _mm512_add_epi32(sa[SPT_H * v + h],
                                                         _mm512_loadu_si512((const void *)(q + 16 * h)));
            }
        }
    }
#pragma GCC unroll 2
    for (int v = 0; v < T; v++)
#pragma GCC unroll 4
        for (int h = 0; h < SPT_H; h++) _mm512_storeu_si512((void *)(s[v] + 16 * h), sa[SPT_H * v + h]);
}

/* One pixel tile (T vectors at rows ys, columns xs) of the task's channels c0..c1 over every input block. */
TARGET static inline __attribute__((always_inline)) void SPT(tile)(
    const SPT_T *x, const int32_t *gsum, const struct i8pairs *sp, const struct i8epi *e, int16_t *out,
    const struct i8geom *p, long n, int c0, int c1, const int *ys, const int *xs,
    __m512i (*accbuf)[SPT_H * SPT_NT], const int T)
{
    const long plane = (long)p->Hp * p->S * p->Wq, rowlen = (long)p->S * p->Wq, hw = (long)p->Ho * p->Wo;
    const long nkb = sp->nkb;
    long src0[SPT_NT];
#pragma GCC unroll 2
    for (int v = 0; v < T; v++) src0[v] = (long)ys[v] * p->sh * rowlen + xs[v];
    int32_t s[SPT_NT][SPT_VPIX];
    __m512d sd[SPT_NT][2 * SPT_H]; /* the window sums of group sg in double, 8 pixels each */
    for (int v = 0; v < SPT_NT; v++) for (int h = 0; h < 2 * SPT_H; h++) sd[v][h] = _mm512_setzero_pd();
    int sg = -1;
    for (long kb = 0; kb < nkb; kb++) {
        for (int m = c0; m < c1; m++) {
            const int g = m / p->Mg;
            const SPT_T *xg = x + (n * p->G + g) * (long)p->P * sp->pstride;
            __m512i acc[SPT_H * SPT_NT];
#pragma GCC unroll 8
            for (int v = 0; v < SPT_H * T; v++) acc[v] = kb ? accbuf[m - c0][v] : _mm512_setzero_si512();
            const long *kp = sp->kptr + (long)m * nkb + kb;
            SPT_RUN(xg, sp->off, sp->w, kp[0], kp[1], src0, acc, T);
            if (kb + 1 < nkb) {
#pragma GCC unroll 8
                for (int v = 0; v < SPT_H * T; v++) accbuf[m - c0][v] = acc[v];
                continue;
            }
            if (sp->acc_off) { /* exact: the int32 sums of the offset input less the offset's part */
                const __m512i ao = _mm512_set1_epi32(sp->acc_off[m]);
#pragma GCC unroll 8
                for (int v = 0; v < SPT_H * T; v++) acc[v] = _mm512_sub_epi32(acc[v], ao);
            }
            if (g != sg) {
                if (p->has_sum) {
                    SPT(sums)(gsum + (n * p->G + g) * plane, p, src0, s, T);
                    if (sp->s_off)
                        for (int v = 0; v < T; v++)
                            for (int l = 0; l < SPT_VPIX; l++) s[v][l] -= (int32_t)sp->s_off;
                    if (!e->fast)
                        for (int v = 0; v < T; v++)
                            for (int h = 0; h < 2 * SPT_H; h++)
                                sd[v][h] = _mm512_cvtepi32_pd(_mm256_loadu_si256((const __m256i *)(s[v] + 8 * h)));
                }
                sg = g;
            }
            const __m512d va = _mm512_set1_pd(e->A[m]), vb = _mm512_set1_pd(e->B[m]), vc = _mm512_set1_pd(e->C[m]);
            /* int16 at out, or (sp->pk, out NULL) uint8 into the next convolution's planes */
            int16_t *ob = out ? out + (n * p->Cout + m) * hw : NULL;
            uint8_t *pb = sp->pk ? sp->pk + (n * p->Cout + m) * sp->pk_ps + sp->pk_off : NULL;
            /* the float32 epilogue's constants (a vector it cannot vouch for takes the double epilogue) */
            __m512 fa = _mm512_setzero_ps(), fb = fa, fc = fa, ft = fa, flo = fa, fhi = fa;
            if (e->fast) {
                fa = _mm512_set1_ps(e->FA[m]), fb = _mm512_set1_ps(e->FB[m]), fc = _mm512_set1_ps(e->FC[m]);
                ft = _mm512_set1_ps(e->FT[m]), flo = _mm512_set1_ps((float)e->lo), fhi = _mm512_set1_ps((float)e->hi);
            }
#pragma GCC unroll 2
            for (int v = 0; v < T; v++) {
                int16_t *dst = ob ? ob + (long)ys[v] * p->Wo + xs[v] : NULL;
                uint8_t *d8 = pb ? pb + (long)ys[v] * sp->pk_row + xs[v] : NULL;
                __m512i o[SPT_H];
                SPT_ORDER(acc + SPT_H * v, o);
#pragma GCC unroll 4
                for (int h = 0; h < SPT_H; h++) {
                    int16_t *d16 = dst ? dst + 16 * h : NULL;
                    uint8_t *d8h = d8 ? d8 + 16 * h : NULL;
                    if (!e->fast) {
                        FN(requant16d)(e, va, vb, vc, o[h], sd[v][2 * h], sd[v][2 * h + 1], d16, d8h);
                        continue;
                    }
                    const __m512i si = p->has_sum ? _mm512_loadu_si512((const void *)(s[v] + 16 * h))
                                                  : _mm512_setzero_si512();
                    const __m512 u = p->has_sum ? _mm512_fmadd_ps(fb, _mm512_cvtepi32_ps(si), fc) : fc;
                    if (FN(requant16f)(fa, u, ft, flo, fhi, o[h], d16, d8h))
                        FN(requant16d)(e, va, vb, vc, o[h], _mm512_cvtepi32_pd(_mm512_castsi512_si256(si)),
                                       _mm512_cvtepi32_pd(_mm512_extracti64x4_epi64(si, 1)), d16, d8h);
                }
            }
        }
    }
}

/* Tasks t0..t1: (image n, chunk of p->rg output rows, chunk of p->bg output channels). */
TARGET static void SPT(fwd)(const SPT_T *x, const int32_t *gsum, const struct i8pairs *sp, const struct i8epi *e,
                            int16_t *out, const struct i8geom *p, long t0, long t1)
{
    const int nrg = (p->Ho + p->rg - 1) / p->rg, ncg = (p->Cout + p->bg - 1) / p->bg;
    const int vrow = (p->Wo + SPT_VPIX - 1) / SPT_VPIX;
    __m512i accbuf[SPT_MAXBG][SPT_H * SPT_NT];
    for (long t = sp->next ? __atomic_fetch_add(sp->next, 1, __ATOMIC_RELAXED) : t0; t < t1;
         t = sp->next ? __atomic_fetch_add(sp->next, 1, __ATOMIC_RELAXED) : t + 1) {
        const long n = t / ((long)nrg * ncg);
        const int rgi = (int)(t / ncg % nrg), cgi = (int)(t % ncg);
        const int y0 = rgi * p->rg, y1 = y0 + p->rg < p->Ho ? y0 + p->rg : p->Ho;
        const int c0 = cgi * p->bg, c1 = c0 + p->bg < p->Cout ? c0 + p->bg : p->Cout;
        const int nvec = (y1 - y0) * vrow;
        int ys[SPT_NT] = {0}, xs[SPT_NT] = {0};
        for (int k = 0; k < nvec;) {
            const int T = nvec - k >= SPT_NT ? SPT_NT : 1;
            for (int v = 0; v < T; v++) {
                const int kv = k + v, r = kv % vrow;
                ys[v] = y0 + kv / vrow;
                xs[v] = r * SPT_VPIX + SPT_VPIX <= p->Wo ? r * SPT_VPIX : p->Wo - SPT_VPIX;
            }
            if (T == SPT_NT) SPT(tile)(x, gsum, sp, e, out, p, n, c0, c1, ys, xs, accbuf, SPT_NT);
            else SPT(tile)(x, gsum, sp, e, out, p, n, c0, c1, ys, xs, accbuf, 1);
            k += T;
        }
    }
}

#undef SPT_VPIX
#undef SPT
#undef SPT_T
#undef SPT_H
#undef SPT_NT
#undef SPT_MAXBG
#undef SPT_RUN
#undef SPT_ORDER
