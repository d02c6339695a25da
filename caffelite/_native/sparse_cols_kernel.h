/* One instantiation of the sparse column-block convolution forward for one vector width.
 *
 * Included by csparse.c after sparse_kernel.h, with the same macros (VW, NV, FN, TARGET).
 *
 * Why: the direct sparse kernel (sparse_kernel.h) loads each tap's input at an arbitrary float offset, so most
 * vector loads straddle two cache lines, and a load is all a tap costs besides its multiply-add. Here a tile of
 * P = T*VW output pixels first copies, per input-channel chunk, the input each tap position reads into an
 * aligned block ("cols": kr rows of P floats, row r = tap position q*kr + r, pixel vectors in the tile's order),
 * once; then every output channel of the group sums val[k] * cols[off[k] ..] with aligned loads from L1.
 * The copy costs kr vector moves per pixel vector and chunk; the multiply-adds Mg * kr * density: it pays when
 * the group has many output channels (the Python side picks the kernel per layer).
 *
 * Layouts as sparse_kernel.h, plus
 *   off   int32 per tap: (idx % kr) * P, the tap's row in the block of its chunk (kr = kc*kh*kw)
 *   otab  (Cg*kh*kw) long: where tap position r reads relative to a pixel's origin (as sparse_kernel.h)
 * The sums are the direct kernel's (one accumulator per output value, taps in idx order, partial sums stored
 * as float32 between chunks), so both kernels give the same bits as the dense kernel.
 */

/* T pixel vectors of output channel m over its taps of chunk q, reading the chunk's block `cols` (P floats
 * per row, 64-byte aligned). */
TARGET static inline __attribute__((always_inline)) void FN(ctile)(
    const float *cols, const struct cols_taps *tp, const struct epilogue *e, float *ob, float *ab,
    const struct sgeom *p, const int *ys, const int *xs, const int *skip, int m, int q, const int T)
{
    FN(vec) acc[NV];
#pragma GCC unroll 8
    for (int v = 0; v < T; v++) acc[v] = q == 0 ? (FN(vec)){0} : *(const FN(vec) *)(ab + v * VW);
    const int32_t *cp = tp->ptr + (long)m * (p->nch + 1) + q;
    const int k1 = cp[1];
    const int32_t *off = tp->off;
    const float *val = tp->val;
    for (int k = cp[0]; k < k1; k++) {
        const float *src = cols + off[k];
        const float wk = val[k];
#pragma GCC unroll 8
        for (int v = 0; v < T; v++) acc[v] += *(const FN(vec) *)(src + v * VW) * wk;
    }
    if (q + 1 < p->nch) {
#pragma GCC unroll 8
        for (int v = 0; v < T; v++) *(FN(vec) *)(ab + v * VW) = acc[v];
    } else {
        FN(sstore)(acc, e, ob, p, ys, xs, skip, m, 1, T);
    }
}

/* Copy rows r0..r1 of the tap-position table for T pixel vectors into the aligned block. */
TARGET static inline __attribute__((always_inline)) void FN(cbuild)(
    float *cols, const float *xg, const long *otab, int r0, int r1, int pitch, const long *src0, const int T)
{
    for (int r = r0; r < r1; r++) {
        const float *s = xg + otab[r];
        float *d = cols + (long)(r - r0) * pitch;
#pragma GCC unroll 8
        for (int v = 0; v < T; v++) *(FN(vec) *)(d + v * VW) = *(const FN(uvec) *)(s + src0[v]);
    }
}

TARGET static inline __attribute__((always_inline)) void FN(ctiles)(
    float *cols, float *accb, const float *xg, const struct cols_taps *tp, const struct epilogue *e, float *obase,
    const struct sgeom *p, const int *ys, const int *xs, const int *skip, int m0, int m1, const int T)
{
    long src0[NV];
    const long rowlen = (long)p->S * p->Wq;
    const long ostride = (long)p->Ho * p->Wo;
    for (int v = 0; v < T; v++) src0[v] = (long)ys[v] * p->sh * rowlen + xs[v];
    for (int q = 0; q < p->nch; q++) {
        const int r0 = q * p->kr, r1 = r0 + p->kr < p->K ? r0 + p->kr : p->K;
#ifndef EXP_NOBUILD
        FN(cbuild)(cols, xg, tp->otab, r0, r1, p->pitch, src0, T);
#endif
        for (int m = m0; m < m1; m++)
            FN(ctile)(cols, tp, e, obase + m * ostride, accb + (long)(m - m0) * p->pitch, p, ys, xs, skip, m, q, T);
    }
}

/* Tasks t0..t1; a task is (image n, up to p->rg output rows, group g) and covers all the group's output
 * channels, so each block is built once per tile and chunk. Returns -1 when the block cannot be allocated. */
TARGET static int FN(cfwd)(const float *x, const struct cols_taps *tp, const struct epilogue *e, float *out,
                           const struct sgeom *p, long t0, long t1)
{
    const int nrg = (p->Ho + p->rg - 1) / p->rg, G = p->Cout / p->Mg;
    const long plane = (long)p->Hp * p->S * p->Wq;
    const int vrow = (p->Wo + VW - 1) / VW;
    const int tmax = p->pitch / VW;
    /* the block, then the partial sums of the group's channels between chunks (contiguous: output channels are
     * a page or more apart) */
    float *cols = aligned_alloc(64, ((size_t)p->kr + (size_t)p->Mg) * p->pitch * sizeof(float));
    if (!cols) return -1;
    float *accb = cols + (size_t)p->kr * p->pitch;
    for (long t = t0; t < t1; t++) {
        const long n = t / ((long)nrg * G);
        const int rgi = (int)(t / G % nrg), g = (int)(t % G);
        const int y0 = rgi * p->rg, y1 = y0 + p->rg < p->Ho ? y0 + p->rg : p->Ho;
        const int m0 = g * p->Mg, m1 = m0 + p->Mg;
        const float *xg = x + (n * p->C + (long)g * p->Cg) * plane;
        float *obase = out + n * p->Cout * (long)p->Ho * p->Wo;
        const int nvec = (y1 - y0) * vrow;
        int ys[NV], xs[NV], skip[NV];
        for (int k = 0; k < nvec;) {
            const int left = nvec - k;
            const int T = left >= tmax ? tmax : left;
            for (int v = 0; v < T; v++) {
                const int kv = k + v, r = kv % vrow;
                ys[v] = y0 + kv / vrow;
                xs[v] = r * VW + VW <= p->Wo ? r * VW : p->Wo - VW;
                skip[v] = r * VW - xs[v];
            }
            switch (T) {
#if NV > 7
            case 8: FN(ctiles)(cols, accb, xg, tp, e, obase, p, ys, xs, skip, m0, m1, 8); break;
            case 7: FN(ctiles)(cols, accb, xg, tp, e, obase, p, ys, xs, skip, m0, m1, 7); break;
            case 6: FN(ctiles)(cols, accb, xg, tp, e, obase, p, ys, xs, skip, m0, m1, 6); break;
            case 5: FN(ctiles)(cols, accb, xg, tp, e, obase, p, ys, xs, skip, m0, m1, 5); break;
#endif
            case 4: FN(ctiles)(cols, accb, xg, tp, e, obase, p, ys, xs, skip, m0, m1, 4); break;
            case 3: FN(ctiles)(cols, accb, xg, tp, e, obase, p, ys, xs, skip, m0, m1, 3); break;
            case 2: FN(ctiles)(cols, accb, xg, tp, e, obase, p, ys, xs, skip, m0, m1, 2); break;
            default: FN(ctiles)(cols, accb, xg, tp, e, obase, p, ys, xs, skip, m0, m1, 1); break;
            }
            k += T;
        }
    }
    free(cols);
    return 0;
}
