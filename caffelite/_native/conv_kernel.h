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
 *   x    phase-split padded input (N, C, Hp, S, Wq): x[n][c][r][s][q] = xpad[n][c][r][q*S + s], S = stride_w
 *   wpk  packed weights (G, nmb, Cg, kh, kw, MB): block b of group g holds output channels g*Mg + b*MB + m
 *        (zero beyond Mg)
 *   out  (N, Cout, Ho, Wo);  dy (N, Cout, Ho, Wo);  dw (Cout, Cg, kh, kw), accumulated into
 * The vector code never reads past the padded input: a tile is vectorised only when all its pixels are valid,
 * the rest of a row goes through the scalar tail.
 */

typedef float FN(vec) __attribute__((vector_size(VW * 4)));
typedef float FN(uvec) __attribute__((vector_size(VW * 4), aligned(4)));

/* One output tile: MB channels x T vectors of pixels starting at column xo of output row y (T is a constant
 * after inlining, so the accumulators live in registers). */
TARGET static inline __attribute__((always_inline)) void FN(tile)(
    const float *xg, const float *wb, const float *bias, float *ob, const struct geom *p, int y, int xo,
    int m0, int mvalid, long ostride, const int T)
{
    FN(vec) acc[MB][NV];
#pragma GCC unroll 64
    for (int m = 0; m < MB; m++)
#pragma GCC unroll 8
        for (int v = 0; v < T; v++) acc[m][v] = (FN(vec)){0};
    for (int c = 0; c < p->Cg; c++) {
        for (int i = 0; i < p->kh; i++) {
            const float *row = xg + ((long)c * p->Hp + (long)y * p->sh + (long)i * p->dh) * p->S * p->Wq;
            const float *wp = wb + ((long)(c * p->kh + i) * p->kw) * MB;
            for (int j = 0; j < p->kw; j++, wp += MB) {
                const float *src = row + p->tap_off[j] + xo;
                FN(vec) xv[NV];
#pragma GCC unroll 8
                for (int v = 0; v < T; v++) xv[v] = *(const FN(uvec) *)(src + v * VW);
#pragma GCC unroll 64
                for (int m = 0; m < MB; m++) {
#pragma GCC unroll 8
                    for (int v = 0; v < T; v++) acc[m][v] += xv[v] * wp[m];
                }
            }
        }
    }
    for (int m = 0; m < mvalid; m++) {
        const float bm = bias ? bias[m0 + m] : 0.0f;
        float *o = ob + m * ostride + xo;
        for (int v = 0; v < T; v++) *(FN(uvec) *)(o + v * VW) = acc[m][v] + bm;
    }
}

/* Forward tasks t0..t1. A task is a chunk: image n, up to p->rg output rows and up to p->bg channel blocks
 * (b, g) (blocks are numbered across groups). Inside a chunk the rows of the input it reads and the packed
 * weights of its blocks stay in cache while every (block, row) pair is computed. */
TARGET static void FN(fwd)(const float *x, const float *wpk, const float *bias, float *out,
                           const struct geom *p, long t0, long t1)
{
    const int nblk = p->G * p->nmb;
    const int nrg = (p->Ho + p->rg - 1) / p->rg, nbg = (nblk + p->bg - 1) / p->bg;
    const long wblock = (long)p->Cg * p->kh * p->kw * MB;
    const long plane = (long)p->Hp * p->S * p->Wq;
    const long ostride = (long)p->Ho * p->Wo;
    for (long t = t0; t < t1; t++) {
        const long n = t / ((long)nrg * nbg);
        const int rgi = (int)(t / nbg % nrg), bgi = (int)(t % nbg);
        const int y0 = rgi * p->rg, y1 = y0 + p->rg < p->Ho ? y0 + p->rg : p->Ho;
        const int b0 = bgi * p->bg, b1 = b0 + p->bg < nblk ? b0 + p->bg : nblk;
        for (int gb = b0; gb < b1; gb++) {
            const int g = gb / p->nmb, b = gb % p->nmb;
            const int m0 = g * p->Mg + b * MB;
            const int mvalid = p->Mg - b * MB < MB ? p->Mg - b * MB : MB;
            const float *wb = wpk + gb * wblock;
            const float *xg = x + (n * p->C + (long)g * p->Cg) * plane;
            for (int y = y0; y < y1; y++) {
                float *ob = out + ((n * p->Cout + m0) * (long)p->Ho + y) * p->Wo;
                int xo = 0;
                /* whole vectors: tiles of NV vectors, ending with 2-vector tiles rather than 1-vector ones
                 * (a wider tile loads fewer weights per FMA) */
                for (int rem = p->Wo / VW; rem > 0;) {
                    if (NV >= 3 && rem != 4 && rem != 2 && rem != 1) {
                        FN(tile)(xg, wb, bias, ob, p, y, xo, m0, mvalid, ostride, NV >= 3 ? 3 : 1);
                        xo += 3 * VW; rem -= 3;
                    } else if (NV >= 2 && rem >= 2) {
                        FN(tile)(xg, wb, bias, ob, p, y, xo, m0, mvalid, ostride, NV >= 2 ? 2 : 1);
                        xo += 2 * VW; rem -= 2;
                    } else {
                        FN(tile)(xg, wb, bias, ob, p, y, xo, m0, mvalid, ostride, 1);
                        xo += VW; rem -= 1;
                    }
                }
                for (; xo < p->Wo; xo++) {
                    float acc[MB] = {0};
                    for (int c = 0; c < p->Cg; c++)
                        for (int i = 0; i < p->kh; i++) {
                            const float *row = xg + ((long)c * p->Hp + (long)y * p->sh + (long)i * p->dh) * p->S * p->Wq;
                            const float *wp = wb + ((long)(c * p->kh + i) * p->kw) * MB;
                            for (int j = 0; j < p->kw; j++, wp += MB) {
                                const float xs = row[p->tap_off[j] + xo];
                                for (int m = 0; m < MB; m++) acc[m] += wp[m] * xs;
                            }
                        }
                    for (int m = 0; m < mvalid; m++) ob[m * ostride + xo] = acc[m] + (bias ? bias[m0 + m] : 0.0f);
                }
            }
        }
    }
}

/* Weight-gradient tasks t0..t1 (t enumerates channel block (g, b) and input channel c of the group);
 * kw must be 3. dw[m, c, i, j] += sum_{n,y,x} dy[n, m, y, x] * xpad[n, cin, y*sh + i*dh, x*sw + j*dw]. */
TARGET static void FN(dw3)(const float *x, const float *dy, float *dw, const struct geom *p, long t0, long t1)
{
    const int nbw = (p->Mg + DW_MB - 1) / DW_MB;
    const long plane = (long)p->Hp * p->S * p->Wq;
    const long oplane = (long)p->Ho * p->Wo;
    for (long t = t0; t < t1; t++) {
        const int c = (int)(t % p->Cg);
        const long gb = t / p->Cg;
        const int g = (int)(gb / nbw), b = (int)(gb % nbw);
        const int m0 = g * p->Mg + b * DW_MB;
        const int mvalid = p->Mg - b * DW_MB < DW_MB ? p->Mg - b * DW_MB : DW_MB;
        const long cin = (long)g * p->Cg + c;
        for (int i = 0; i < p->kh; i++) {
            FN(vec) acc[DW_MB][3];
            float sacc[DW_MB][3];
#pragma GCC unroll 64
            for (int m = 0; m < DW_MB; m++)
#pragma GCC unroll 3
                for (int j = 0; j < 3; j++) { acc[m][j] = (FN(vec)){0}; sacc[m][j] = 0.0f; }
            for (int n = 0; n < p->N; n++) {
                const float *dyb = dy + (n * (long)p->Cout + m0) * oplane;
                for (int y = 0; y < p->Ho; y++) {
                    const float *row = x + (n * p->C + cin) * plane + ((long)y * p->sh + (long)i * p->dh) * p->S * p->Wq;
                    const float *dyr = dyb + (long)y * p->Wo;
                    int xo = 0;
                    if (mvalid == DW_MB) {
                        for (; xo + VW <= p->Wo; xo += VW) {
                            FN(vec) xv[3];
#pragma GCC unroll 3
                            for (int j = 0; j < 3; j++) xv[j] = *(const FN(uvec) *)(row + p->tap_off[j] + xo);
#pragma GCC unroll 64
                            for (int m = 0; m < DW_MB; m++) {
                                const FN(vec) d = *(const FN(uvec) *)(dyr + m * oplane + xo);
#pragma GCC unroll 3
                                for (int j = 0; j < 3; j++) acc[m][j] += d * xv[j];
                            }
                        }
                    }
                    for (; xo < p->Wo; xo++)
                        for (int m = 0; m < mvalid; m++) {
                            const float d = dyr[m * oplane + xo];
                            for (int j = 0; j < 3; j++) sacc[m][j] += d * row[p->tap_off[j] + xo];
                        }
                }
            }
            for (int m = 0; m < mvalid; m++)
                for (int j = 0; j < 3; j++) {
                    float s = sacc[m][j];
                    for (int l = 0; l < VW; l++) s += acc[m][j][l];
                    dw[(((long)(m0 + m) * p->Cg + c) * p->kh + i) * 3 + j] += s;
                }
        }
    }
}
