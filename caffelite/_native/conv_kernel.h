/* One instantiation of the direct-convolution kernels for one vector width.
 *
 * Included by cconv.c once per instruction set with these macros defined:
 *   VW      floats per vector register       NV      most vectors per output tile (1..3; tile = MB channels x
 *                                                    VW*NV pixels)
 *   DW_MB   output channels per weight-gradient task
 *   FN(x)   adds the instruction-set suffix to a name
 *   TARGET  the function attribute selecting the instruction set (empty for the portable build)
 *
 * Layouts (all float32, C order):
 *   x    phase-split padded input (N, C, Hp, S, Wq): x[n][c][r][s][q] = xpad[n][c][r][q*S + s], S = stride_w;
 *        forward with panels (p->hl > 0): the raw input (N, C, H, W), each task padding its rows (panel.h)
 *   wpk  packed weights (G, nmb, Cg, kh, kw, MB): block b of group g holds output channels g*Mg + b*MB + m
 *        (zero beyond Mg)
 *   out  (N, Cout, Ho, Wo);  dy (N, Cout, Ho, Wo);  dw (Cout, Cg, kh, kw), accumulated into
 * Output rows must be at least one vector wide (the entry points in cconv.c check; narrower maps stay on the
 * NumPy path). A row whose width is not a multiple of the vector ends with a vector ending at Wo.
 */

typedef float FN(vec) __attribute__((vector_size(VW * 4)));
typedef float FN(uvec) __attribute__((vector_size(VW * 4), aligned(4)));
typedef int FN(ivec) __attribute__((vector_size(VW * 4)));

/* One output tile: MB channels x T pixel vectors, vector v starting at column xs[v] of output row ys[v] (the
 * vectors of a tile may lie on different rows). T is a constant after inlining, so the accumulators live in
 * registers. */
TARGET static inline __attribute__((always_inline)) void FN(tile)(
    const float *xg, const float *wb, const struct epilogue *e, float *ob, const struct geom *p, const int *ys,
    const int *xs, const int *skip, int m0, int mvalid, int c0, int c1, int rb, const int T)
{
    FN(vec) acc[MB][NV];
    long src0[NV];
    const long rowlen = (long)p->S * p->Wq;
    const long ostride = (long)p->Ho * p->Wo;
    /* rb: the padded input row xg's first row holds (a task's panel starts at its first output row's input) */
#pragma GCC unroll 8
    for (int v = 0; v < T; v++) src0[v] = ((long)ys[v] * p->sh - rb) * rowlen + xs[v];
    /* input channels c0..c1 of the group: the first range starts from zero, later ones from the partial sums
     * stored in the output (float32 either way, so the result does not depend on the ranges) */
#pragma GCC unroll 64
    for (int m = 0; m < MB; m++)
#pragma GCC unroll 8
        for (int v = 0; v < T; v++)
            acc[m][v] = (c0 == 0 || m >= mvalid) ? (FN(vec)){0}
                        : *(const FN(uvec) *)(ob + m * ostride + (long)ys[v] * p->Wo + xs[v]);
    for (int c = c0; c < c1; c++) {
        for (int i = 0; i < p->kh; i++) {
            const float *row = xg + ((long)c * p->Hp + (long)i * p->dh) * rowlen;
            const float *wp = wb + ((long)(c * p->kh + i) * p->kw) * MB;
            for (int j = 0; j < p->kw; j++, wp += MB) {
                const float *src = row + p->tap_off[j];
                FN(vec) xv[NV];
#pragma GCC unroll 8
                for (int v = 0; v < T; v++) xv[v] = *(const FN(uvec) *)(src + src0[v]);
#pragma GCC unroll 64
                for (int m = 0; m < MB; m++) {
#pragma GCC unroll 8
                    for (int v = 0; v < T; v++) acc[m][v] += xv[v] * wp[m];
                }
            }
        }
    }
    /* a row's last vector overlaps pixels of the previous one (skip[v] lanes): those lanes are not stored, so
     * each pixel is written by exactly one vector (partial sums must not be added twice) */
    if (c1 < p->Cg) { /* partial sums */
        for (int m = 0; m < mvalid; m++)
            for (int v = 0; v < T; v++) {
                float *o = ob + m * ostride + (long)ys[v] * p->Wo + xs[v];
                if (skip[v] == 0) *(FN(uvec) *)o = acc[m][v];
                else for (int l = skip[v]; l < VW; l++) o[l] = acc[m][v][l];
            }
        return;
    }
    for (int m = 0; m < mvalid; m++) {
        const float bm = e->bias ? e->bias[m0 + m] : 0.0f;
        for (int v = 0; v < T; v++) {
            FN(vec) o = acc[m][v] + bm;
            if (e->scale) { o = o * e->scale[m0 + m]; o = o + e->shift[m0 + m]; }
            if (e->relu) { /* o < 0 ? o * slope : o, as a bitwise select (C has no vector ?:) */
                const FN(ivec) neg = o < 0.0f;
                o = (FN(vec))(((FN(ivec))(o * e->slope) & neg) | ((FN(ivec))o & ~neg));
            }
            float *dst = ob + m * ostride + (long)ys[v] * p->Wo + xs[v];
            if (skip[v] == 0) *(FN(uvec) *)dst = o;
            else for (int l = skip[v]; l < VW; l++) dst[l] = o[l];
        }
    }
}

/* Forward tasks t0..t1. A task is a chunk: image n, up to p->rg output rows and up to p->bg channel blocks
 * (b, g) (blocks are numbered across groups). Inside a chunk the rows of the input it reads and the packed
 * weights of its blocks stay in cache while every (block, row) pair is computed.
 * The chunk's output pixels are covered by vectors, row by row; a row whose width is not a multiple of the
 * vector ends with a vector ending at Wo, which overlaps pixels already written (it recomputes them with the
 * same sums in the same order, so they do not change). The vectors are taken NV at a time, across rows.
 * With panels (p->hl > 0) a task first pads the input rows of its groups into a panel (panel.h), which the
 * tiles then read as they would the padded image. Returns -3 when the panel cannot be allocated. */
TARGET static int FN(fwd)(const float *x, const float *wpk, const struct epilogue *e, float *out,
                          const struct geom *p, long t0, long t1)
{
    const int nblk = p->G * p->nmb;
    const int nrg = (p->Ho + p->rg - 1) / p->rg, nbg = (nblk + p->bg - 1) / p->bg;
    const long wblock = (long)p->Cg * p->kh * p->kw * MB;
    const int vrow = (p->Wo + VW - 1) / VW;  /* vectors per output row */
    struct geom q = *p;  /* with panels: Hp = the panel's rows */
    float *panel = NULL;
    int maxg = 0;  /* with panels: most groups a task's blocks span */
    const struct panel_src ps = {x, p->C, p->H, p->W, p->ph, p->pw, p->S, p->Wq};
    if (p->hl > 0) {
        q.Hp = p->hl;
        maxg = (p->bg - 1) / p->nmb + 2 < p->G ? (p->bg - 1) / p->nmb + 2 : p->G;
        const size_t bytes = ((size_t)maxg * p->Cg * p->hl * p->S * p->Wq * sizeof(float) + 63) / 64 * 64;
        panel = (float *)aligned_alloc(64, bytes);
        if (!panel) return -3;
    }
    const long plane = (long)q.Hp * p->S * p->Wq;
    for (long t = t0; t < t1; t++) {
        const long n = t / ((long)nrg * nbg);
        const int rgi = (int)(t / nbg % nrg), bgi = (int)(t % nbg);
        const int y0 = rgi * p->rg, y1 = y0 + p->rg < p->Ho ? y0 + p->rg : p->Ho;
        const int b0 = bgi * p->bg, b1 = b0 + p->bg < nblk ? b0 + p->bg : nblk;
        const int nvec = (y1 - y0) * vrow;
        const int gfirst = b0 / p->nmb;
        int rb = 0;
        if (panel) {
            rb = y0 * p->sh;
            build_panel(panel, &ps, n, gfirst * p->Cg, ((b1 - 1) / p->nmb - gfirst + 1) * p->Cg, rb,
                        (y1 - 1 - y0) * p->sh + (p->kh - 1) * p->dh + 1, p->hl);
        }
        for (int c0 = 0; c0 < p->Cg; c0 += p->kc) {
        const int c1 = c0 + p->kc < p->Cg ? c0 + p->kc : p->Cg;
        for (int gb = b0; gb < b1; gb++) {
            const int g = gb / p->nmb, b = gb % p->nmb;
            const int m0 = g * p->Mg + b * MB;
            const int mvalid = p->Mg - b * MB < MB ? p->Mg - b * MB : MB;
            const float *wb = wpk + gb * wblock;
            const float *xg = panel ? panel + (long)(g - gfirst) * p->Cg * plane
                                    : x + (n * p->C + (long)g * p->Cg) * plane;
            float *ob = out + (n * p->Cout + m0) * (long)p->Ho * p->Wo;
            int ys[NV], xs[NV], skip[NV];
            for (int k = 0; k < nvec;) {
                const int left = nvec - k;
                /* NV vectors per tile; end with 2-vector tiles rather than a 1-vector one */
                const int T = (NV >= 3 && left != 4 && left >= 3) ? 3 : (NV >= 2 && left >= 2) ? 2 : 1;
                for (int v = 0; v < T; v++) {
                    const int kv = k + v, r = kv % vrow;
                    ys[v] = y0 + kv / vrow;
                    xs[v] = r * VW + VW <= p->Wo ? r * VW : p->Wo - VW;
                    skip[v] = r * VW - xs[v];
                }
                if (T == 3) FN(tile)(xg, wb, e, ob, &q, ys, xs, skip, m0, mvalid, c0, c1, rb, NV >= 3 ? 3 : 1);
                else if (T == 2) FN(tile)(xg, wb, e, ob, &q, ys, xs, skip, m0, mvalid, c0, c1, rb, NV >= 2 ? 2 : 1);
                else FN(tile)(xg, wb, e, ob, &q, ys, xs, skip, m0, mvalid, c0, c1, rb, 1);
                k += T;
            }
        }
        }
    }
    free(panel);
    return 0;
}

/* Weight gradient of one task over pixel rows y0..y1 of image n, for KW = kw (a constant after inlining).
 * acc holds the partial sums of the task: [channel of the chunk][kernel row i][m][j] vectors; they are loaded
 * and stored once per (channel, i) while the chunk's dy rows stay in L1. */
TARGET static inline __attribute__((always_inline)) void FN(dw_rows)(
    const float *x, const float *dy, const struct geom *p, FN(vec) *acc, int n, int y0, int y1,
    int m0, int mvalid, long cin0, int nch, FN(vec) tail_mask, const int KW, const int DM)
{
    const long plane = (long)p->Hp * p->S * p->Wq;
    const long oplane = (long)p->Ho * p->Wo;
    const float *dyb = dy + (n * (long)p->Cout + m0) * oplane;
    long dyoff[DW_MB];
    /* channels past the layer's count read the last real channel's row (valid memory); their sums are dropped */
    for (int m = 0; m < DM; m++) dyoff[m] = (m < mvalid ? m : mvalid - 1) * oplane;
    const int nvec = p->Wo / VW, has_tail = p->Wo % VW != 0;
    const FN(vec) ones = (FN(vec)){0} + 1.0f;
    for (int c = 0; c < nch; c++) {
        for (int i = 0; i < p->kh; i++) {
            FN(vec) a[DW_MB][5]; /* fixed sizes (not KW): arrays with constant bounds stay in registers */
            FN(vec) *ap = acc + ((long)c * p->kh + i) * DM * KW;
#pragma GCC unroll 64
            for (int m = 0; m < DM; m++)
#pragma GCC unroll 8
                for (int j = 0; j < KW; j++) a[m][j] = ap[m * KW + j];
            for (int y = y0; y < y1; y++) {
                const float *row = x + (n * p->C + cin0 + c) * plane + ((long)y * p->sh + (long)i * p->dh) * p->S * p->Wq;
                const float *dyr = dyb + (long)y * p->Wo;
                for (int v = 0; v < nvec + has_tail; v++) {
                    /* the last step of a row with a partial vector: the vector ending at Wo, with the lanes
                     * already summed zeroed (in x: KW multiplies instead of DM) */
                    const int xo = v < nvec ? v * VW : p->Wo - VW;
                    const FN(vec) mask = v < nvec ? ones : tail_mask;
                    FN(vec) xv[5];
#pragma GCC unroll 8
                    for (int j = 0; j < KW; j++) xv[j] = *(const FN(uvec) *)(row + p->tap_off[j] + xo) * mask;
#pragma GCC unroll 64
                    for (int m = 0; m < DM; m++) {
                        const FN(vec) d = *(const FN(uvec) *)(dyr + dyoff[m] + xo);
#pragma GCC unroll 8
                        for (int j = 0; j < KW; j++) a[m][j] += d * xv[j];
                    }
                }
            }
#pragma GCC unroll 64
            for (int m = 0; m < DM; m++)
#pragma GCC unroll 8
                for (int j = 0; j < KW; j++) ap[m * KW + j] = a[m][j];
        }
    }
}

/* Weight-gradient tasks t0..t1, for kernels KW wide. A task is (channel block (g, b) of DM output channels,
 * chunk of p->bg input channels of the group); it walks the pixels in chunks of p->rg rows.
 * dw[m, c, i, j] += sum_{n,y,x} dy[n, m, y, x] * xpad[n, cin, y*sh + i*dh, x*sw + j*dw]. */
TARGET static inline __attribute__((always_inline)) int FN(dw_tasks)(
    const float *x, const float *dy, float *dw, const struct geom *p, long t0, long t1, const int KW, const int DM)
{
    const int nbw = (p->Mg + DM - 1) / DM, ncc = (p->Cg + p->bg - 1) / p->bg;
    const long per_c = (long)p->kh * DM * KW;
    /* aligned_alloc wants a size that is a multiple of the alignment */
    const size_t acc_bytes = (sizeof(FN(vec)) * per_c * p->bg + 63) / 64 * 64;
    FN(vec) *acc = (FN(vec) *)aligned_alloc(64, acc_bytes);
    if (!acc) return -3;
    FN(vec) tail_mask;  /* lanes of a row's last vector not covered by its whole vectors */
    for (int l = 0; l < VW; l++) tail_mask[l] = l >= VW - p->Wo % VW ? 1.0f : 0.0f;
    for (long t = t0; t < t1; t++) {
        const int cc = (int)(t % ncc);
        const long gb = t / ncc;
        const int g = (int)(gb / nbw), b = (int)(gb % nbw);
        const int m0 = g * p->Mg + b * DM;
        const int mvalid = p->Mg - b * DM < DM ? p->Mg - b * DM : DM;
        const int c0 = cc * p->bg, nch = p->Cg - c0 < p->bg ? p->Cg - c0 : p->bg;
        const long cin0 = (long)g * p->Cg + c0;
        for (long k = 0; k < per_c * nch; k++) acc[k] = (FN(vec)){0};
        for (int n = 0; n < p->N; n++)
            for (int y0 = 0; y0 < p->Ho; y0 += p->rg)
                FN(dw_rows)(x, dy, p, acc, n, y0, y0 + p->rg < p->Ho ? y0 + p->rg : p->Ho, m0, mvalid,
                            cin0, nch, tail_mask, KW, DM);
        for (int c = 0; c < nch; c++)
            for (int i = 0; i < p->kh; i++)
                for (int m = 0; m < mvalid; m++)
                    for (int j = 0; j < KW; j++) {
                        const long k = (((long)c * p->kh + i) * DM + m) * KW + j;
                        float s = 0.0f;
                        for (int l = 0; l < VW; l++) s += acc[k][l];
                        dw[(((long)(m0 + m) * p->Cg + c0 + c) * p->kh + i) * KW + j] += s;
                    }
    }
    free(acc);
    return 0;
}

TARGET static int FN(dw)(const float *x, const float *dy, float *dw, const struct geom *p, long t0, long t1)
{
    switch (p->kw) {
    case 1: return FN(dw_tasks)(x, dy, dw, p, t0, t1, 1, DW_MB);
    case 3: return FN(dw_tasks)(x, dy, dw, p, t0, t1, 3, DW_MB);
    case 5: return FN(dw_tasks)(x, dy, dw, p, t0, t1, 5, DW_MB5);
    default: return -1;
    }
}
