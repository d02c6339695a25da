/* One instantiation of the sparse row-block convolution forward for one vector width.
 *
 * Included by csparse.c after sparse_kernel.h, with the same macros (VW, NV, FN, TARGET).
 *
 * Why: the direct sparse kernel (sparse_kernel.h) loads each tap's input at an arbitrary float offset, so most
 * vector loads straddle two cache lines, and a load is all a tap costs besides its multiply-add. Here a tile of
 * R output rows x V pixel vectors first copies, per input-channel chunk, the input it reads into an aligned
 * block, once: for each channel c of the chunk and kernel column j, the ni input rows under the tile's rows,
 * shifted so that column j's pixels start on a vector boundary (layout [c][j][row][V*VW floats]). A tap
 * (c, i, j) of output row r then reads block row (c, j, r*sh + i*dh): every output channel of the group sums
 * val[k] * block[off[k] + r*sh*V*VW + u*VW] with aligned loads from L1. Kernel rows share the copied rows, so
 * the copy costs kw * ni / R vector moves per output vector and input channel, against Mg * density
 * multiply-adds per tap position: it pays when the group has many output channels (the Python side picks the
 * kernel per layer).
 *
 * Layouts as sparse_kernel.h, plus
 *   off   uint16 per tap: ((c % kc) * kw + j) * ni + i * dh) * V * VW, the tap's first block row
 *   otab  (Cg*kh*kw) long: where tap position (c, i, j) reads relative to a pixel's origin (sparse_kernel.h);
 *         the copy uses the entries with i = 0
 * The sums are the direct kernel's (one accumulator per output value, taps in idx order, partial sums kept as
 * float32 between chunks), so both kernels give the dense kernel's bits. A row's last tile may overlap the
 * previous one: it recomputes the same sums and stores the same values.
 */

/* R x V accumulators of output channel m over its taps of chunk q; partial sums in ab between chunks. */
TARGET static inline __attribute__((always_inline)) void FN(rtile)(
    const float *blk, const struct cols_taps *tp, const struct epilogue *e, float *ob, float *ab,
    const struct sgeom *p, int y, int xt, int m, int q, const int R, const int V)
{
    FN(vec) acc[NV];
    const long rs = (long)p->sh * V * VW;
#pragma GCC unroll 8
    for (int v = 0; v < R * V; v++) acc[v] = q == 0 ? (FN(vec)){0} : *(const FN(vec) *)(ab + v * VW);
    const int32_t *cp = tp->ptr + (long)m * (p->nch + 1) + q;
    const int k1 = cp[1];
    const uint16_t *off = tp->off;
    const float *val = tp->val;
    for (int k = cp[0]; k < k1; k++) {
        const float *src = blk + off[k];
        const float wk = val[k];
#pragma GCC unroll 8
        for (int r = 0; r < R; r++)
#pragma GCC unroll 2
            for (int u = 0; u < V; u++) acc[r * V + u] += *(const FN(vec) *)(src + r * rs + u * VW) * wk;
    }
    if (q + 1 < p->nch) {
#pragma GCC unroll 8
        for (int v = 0; v < R * V; v++) *(FN(vec) *)(ab + v * VW) = acc[v];
        return;
    }
    const float bm = e->bias ? e->bias[m] : 0.0f;
#pragma GCC unroll 8
    for (int v = 0; v < R * V; v++) {
        FN(vec) o = acc[v] + bm;
        if (e->scale) { o = o * e->scale[m]; o = o + e->shift[m]; }
        if (e->relu) {
            const FN(ivec) neg = o < 0.0f;
            o = (FN(vec))(((FN(ivec))(o * e->slope) & neg) | ((FN(ivec))o & ~neg));
        }
        *(FN(uvec) *)(ob + (long)(y + v / V) * p->Wo + xt + v % V * VW) = o;
    }
}

/* Copy the block of channels c0..c1 for the tile at output row y, column xt (R rows). (Software prefetch of
 * the next chunk's input was measured: no gain.) */
TARGET static inline __attribute__((always_inline)) void FN(rbuild)(
    float *blk, const float *xg, const long *otab, const struct sgeom *p, int y, int xt, int c0, int c1, int rb,
    const int R, const int V)
{
    const long rowlen = (long)p->S * p->Wq;
    const int nrow = (R - 1) * p->sh + (p->kh - 1) * p->dh + 1;
    /* rb: the padded input row xg's first row holds (a task's panel starts at its first output row's input) */
    const long base = ((long)y * p->sh - rb) * rowlen + xt;
    for (int c = c0; c < c1; c++)
        for (int j = 0; j < p->kw; j++) {
            const float *s = xg + otab[(long)c * p->kh * p->kw + j] + base;
            float *d = blk + ((long)(c - c0) * p->kw + j) * p->ni * V * VW;
            for (int i = 0; i < nrow; i++, s += rowlen, d += V * VW)
#pragma GCC unroll 2
                for (int u = 0; u < V; u++) *(FN(vec) *)(d + u * VW) = *(const FN(uvec) *)(s + u * VW);
        }
}

TARGET static inline __attribute__((always_inline)) void FN(rtiles)(
    float *blk, float *accb, const float *xg, const struct cols_taps *tp, const struct epilogue *e, float *obase,
    const struct sgeom *p, int y, int xt, int m0, int m1, int rb, const int R, const int V)
{
    const long ostride = (long)p->Ho * p->Wo;
    for (int q = 0; q < p->nch; q++) {
        const int c0 = q * p->kc, c1 = c0 + p->kc < p->Cg ? c0 + p->kc : p->Cg;
        FN(rbuild)(blk, xg, tp->otab, p, y, xt, c0, c1, rb, R, V);
        for (int m = m0; m < m1; m++)
            FN(rtile)(blk, tp, e, obase + m * ostride, accb + (long)(m - m0) * R * V * VW, p, y, xt, m, q, R, V);
    }
}

/* all the tiles of rows y0..y1 for V vectors per tile: R = p->rt rows, the last rows in tiles of 4, 3, 2, 1 */
#define RTILES_ROWS(V)                                                                                              \
    for (int y = y0; y < y1;) {                                                                                     \
        const int R = y1 - y >= p->rt ? p->rt : y1 - y >= 4 ? 4 : y1 - y;                                           \
        for (int xt = 0; xt < p->Wo; xt += (V) * VW) {                                                              \
            const int x0 = xt + (V) * VW <= p->Wo ? xt : p->Wo - (V) * VW;                                          \
            switch (R) {                                                                                            \
            case 1: FN(rtiles)(blk, accb, xg, tp, e, obase, p, y, x0, m0, m1, rb, 1, V); break;                     \
            case 2: FN(rtiles)(blk, accb, xg, tp, e, obase, p, y, x0, m0, m1, rb, 2, V); break;                     \
            case 3: if (3 * (V) <= NV) FN(rtiles)(blk, accb, xg, tp, e, obase, p, y, x0, m0, m1, rb, 3, V); break;  \
            case 4: if (4 * (V) <= NV) FN(rtiles)(blk, accb, xg, tp, e, obase, p, y, x0, m0, m1, rb, 4, V); break;  \
            default: if (8 * (V) <= NV) FN(rtiles)(blk, accb, xg, tp, e, obase, p, y, x0, m0, m1, rb, 8, V); break; \
            }                                                                                                       \
        }                                                                                                           \
        y += R;                                                                                                     \
    }

/* Tasks t0..t1; a task is (image n, up to p->rg output rows, group g) and covers all the group's output
 * channels, so each block is built once per tile and chunk. p->rt is 1, 2, 3, 4 or 8 (csparse.c checks). With
 * panels (p->hl > 0) a task first pads the input rows of its group into a panel (panel.h), which the blocks
 * are then copied from (block copies straight from the raw input were measured: up to 30% slower on inputs
 * past L2, whose rows the panel copy streams in order). Returns -1 when the block or the panel cannot be
 * allocated. */
TARGET static int FN(cfwd)(const float *x, const struct cols_taps *tp, const struct epilogue *e, float *out,
                           const struct sgeom *p, long t0, long t1)
{
    const int nrg = (p->Ho + p->rg - 1) / p->rg, G = p->Cout / p->Mg;
    const long plane = (long)(p->hl > 0 ? p->hl : p->Hp) * p->S * p->Wq;
    const size_t tile = (size_t)p->rt * p->vt * VW;
    /* the block, then the partial sums of the group's channels between chunks (contiguous: output channels are
     * a page or more apart) */
    float *blk = aligned_alloc(64, ((size_t)p->kc * p->kw * p->ni * p->vt * VW + (size_t)p->Mg * tile)
                                       * sizeof(float));
    if (!blk) return -1;
    float *accb = blk + (size_t)p->kc * p->kw * p->ni * p->vt * VW;
    float *panel = NULL;
    const struct panel_src ps = {x, p->C, p->H, p->W, p->ph, p->pw, p->S, p->Wq};
    if (p->hl > 0) {
        panel = (float *)aligned_alloc(64, ((size_t)p->Cg * plane * sizeof(float) + 63) / 64 * 64);
        if (!panel) { free(blk); return -1; }
    }
    for (long t = t0; t < t1; t++) {
        const long n = t / ((long)nrg * G);
        const int rgi = (int)(t / G % nrg), g = (int)(t % G);
        const int y0 = rgi * p->rg, y1 = y0 + p->rg < p->Ho ? y0 + p->rg : p->Ho;
        const int m0 = g * p->Mg, m1 = m0 + p->Mg;
        const int rb = panel ? y0 * p->sh : 0;
        if (panel)
            build_panel(panel, &ps, n, g * p->Cg, p->Cg, rb, (y1 - 1 - y0) * p->sh + (p->kh - 1) * p->dh + 1, p->hl);
        const float *xg = panel ? panel : x + (n * p->C + (long)g * p->Cg) * plane;
        float *obase = out + n * p->Cout * (long)p->Ho * p->Wo;
        if (p->vt == 2) {
            RTILES_ROWS(2)
        } else {
            RTILES_ROWS(1)
        }
    }
    free(panel);
    free(blk);
    return 0;
}
#undef RTILES_ROWS
