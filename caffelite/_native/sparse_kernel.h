/* One instantiation of the sparse direct-convolution forward for one vector width.
 *
 * Included by csparse.c once per instruction set with these macros defined:
 *   VW      floats per vector register      NV   pixel vectors per output tile (1..8)
 *   FN(x)   adds the instruction-set suffix  TARGET  the function attribute selecting the instruction set
 *
 * Layouts (float32 unless said, C order):
 *   x     phase-split padded input (N, C, Hp, S, Wq), as the dense kernel's (conv_kernel.h); with panels
 *         (p->hl > 0) the raw input (N, C, H, W), each task padding its rows into a panel (panel.h) whose
 *         planes have hl rows instead of Hp
 *   ptr   (Cout, nch + 1) int32: the taps of output channel m reading input-channel chunk q (channels
 *         q*kc .. q*kc+kc-1 of its group) are ptr[m][q] .. ptr[m][q+1]-1; a channel's taps are in ascending
 *         (c, i, j) order inside its group (the dense kernel's order)
 *   off   long per tap (c, i, j): where it reads, relative to the pixel's origin in its group's input:
 *         c*plane + i*dh*S*Wq + tap_off[j] (one load per tap: a position index and a table of offsets cost a
 *         second, dependent load, measured 6-9% slower on jsegnet21v2's conv1b and ctx_final)
 *   val   float32 per tap: the nonzero weight
 *   out   (N, Cout, Ho, Wo)
 * Each output value is one accumulator summed over the channel's taps in (c, i, j) order, then + bias, * scale +
 * shift, ReLU: the dense kernel's arithmetic with the zero products left out (adding 0*x does not change a
 * float sum of finite values), so the two agree to the bit on finite inputs.
 */

typedef float FN(vec) __attribute__((vector_size(VW * 4)));
typedef float FN(uvec) __attribute__((vector_size(VW * 4), aligned(4)));
typedef int FN(ivec) __attribute__((vector_size(VW * 4)));

/* Store T accumulated pixel vectors of output channel m: partial sums as they are, or (last) through the
 * epilogue. A row's last vector may overlap the previous one: the overlapped lanes are not stored again
 * (partial sums must not be added twice). */
TARGET static inline __attribute__((always_inline)) void FN(sstore)(
    const FN(vec) *acc, const struct epilogue *e, float *ob, const struct sgeom *p, const int *ys, const int *xs,
    const int *skip, int m, int last, const int T)
{
    if (!last) {
#pragma GCC unroll 8
        for (int v = 0; v < T; v++) {
            float *dst = ob + (long)ys[v] * p->Wo + xs[v];
            if (skip[v] == 0) *(FN(uvec) *)dst = acc[v];
            else for (int l = skip[v]; l < VW; l++) dst[l] = acc[v][l];
        }
        return;
    }
    const float bm = e->bias ? e->bias[m] : 0.0f;
#pragma GCC unroll 8
    for (int v = 0; v < T; v++) {
        FN(vec) o = acc[v] + bm;
        if (e->scale) { o = o * e->scale[m]; o = o + e->shift[m]; }
        if (e->relu) {
            const FN(ivec) neg = o < 0.0f;
            o = (FN(vec))(((FN(ivec))(o * e->slope) & neg) | ((FN(ivec))o & ~neg));
        }
        float *dst = ob + (long)ys[v] * p->Wo + xs[v];
        if (skip[v] == 0) *(FN(uvec) *)dst = o;
        else for (int l = skip[v]; l < VW; l++) dst[l] = o[l];
    }
}

/* T pixel vectors of output channel m over the taps of input-channel chunk q (T constant after inlining: the
 * accumulators live in registers). Chunks after the first start from the partial sums stored in the output
 * (float32 either way, so the result does not depend on the chunking); the last one applies the epilogue. */
TARGET static inline __attribute__((always_inline)) void FN(stile)(
    const float *xg, const struct sparse_taps *tp, const struct epilogue *e, float *ob, const struct sgeom *p,
    const int *ys, const int *xs, const int *skip, int m, int q, int rb, const int T)
{
    FN(vec) acc[NV];
    long src0[NV];
    const long rowlen = (long)p->S * p->Wq;
    /* rb: the padded input row xg's first row holds (a task's panel starts at its first output row's input) */
#pragma GCC unroll 8
    for (int v = 0; v < T; v++) {
        src0[v] = ((long)ys[v] * p->sh - rb) * rowlen + xs[v];
        acc[v] = q == 0 ? (FN(vec)){0} : *(const FN(uvec) *)(ob + (long)ys[v] * p->Wo + xs[v]);
    }
    const int32_t *cp = tp->ptr + (long)m * (p->nch + 1) + q;
    const int k1 = cp[1];
    for (int k = cp[0]; k < k1; k++) {
        const float *src = xg + tp->off[k];
        const float wk = tp->val[k];
#pragma GCC unroll 8
        for (int v = 0; v < T; v++) acc[v] += *(const FN(uvec) *)(src + src0[v]) * wk;
    }
    FN(sstore)(acc, e, ob, p, ys, xs, skip, m, q + 1 == p->nch, T);
}

/* Tasks t0..t1; a task is (image n, up to p->rg output rows, up to p->mb output channels). Inside a task:
 * input-channel chunks (p->kc channels), then pixel vectors, then channels. The input rows one chunk's taps
 * read for NV pixel vectors fit in L1 and are reused by every channel of the task: the kernel does one
 * vector load per multiply-add, so without that reuse L2 bandwidth would bound it. With panels (p->hl > 0) a task
 * first pads the input rows of its channels' groups into a panel (panel.h). Returns -1 when the panel cannot be
 * allocated. */
TARGET static int FN(sfwd)(const float *x, const struct sparse_taps *tp, const struct epilogue *e, float *out,
                           const struct sgeom *p, long t0, long t1)
{
    const int nrg = (p->Ho + p->rg - 1) / p->rg, nmc = (p->Cout + p->mb - 1) / p->mb;
    const long plane = (long)(p->hl > 0 ? p->hl : p->Hp) * p->S * p->Wq;
    const int vrow = (p->Wo + VW - 1) / VW;
    const int G = p->Cout / p->Mg;
    float *panel = NULL;
    const struct panel_src ps = {x, p->C, p->H, p->W, p->ph, p->pw, p->S, p->Wq};
    if (p->hl > 0) {
        const int maxg = (p->mb - 1) / p->Mg + 2 < G ? (p->mb - 1) / p->Mg + 2 : G;
        panel = (float *)aligned_alloc(64, ((size_t)maxg * p->Cg * plane * sizeof(float) + 63) / 64 * 64);
        if (!panel) return -1;
    }
    for (long t = t0; t < t1; t++) {
        const long n = t / ((long)nrg * nmc);
        const int rgi = (int)(t / nmc % nrg), mci = (int)(t % nmc);
        const int y0 = rgi * p->rg, y1 = y0 + p->rg < p->Ho ? y0 + p->rg : p->Ho;
        const int m0 = mci * p->mb, m1 = m0 + p->mb < p->Cout ? m0 + p->mb : p->Cout;
        const int nvec = (y1 - y0) * vrow;
        const int gfirst = m0 / p->Mg;
        int rb = 0;
        if (panel) {
            rb = y0 * p->sh;
            build_panel(panel, &ps, n, gfirst * p->Cg, ((m1 - 1) / p->Mg - gfirst + 1) * p->Cg, rb,
                        (y1 - 1 - y0) * p->sh + (p->kh - 1) * p->dh + 1, p->hl);
        }
        int ys[NV], xs[NV], skip[NV];
        for (int q = 0; q < p->nch; q++)
        for (int k = 0; k < nvec;) {
            const int left = nvec - k;
            const int T = left >= NV ? NV : left >= 4 ? 4 : left;
            for (int v = 0; v < T; v++) {
                const int kv = k + v, r = kv % vrow;
                ys[v] = y0 + kv / vrow;
                xs[v] = r * VW + VW <= p->Wo ? r * VW : p->Wo - VW;
                skip[v] = r * VW - xs[v];
            }
            for (int m = m0; m < m1; m++) {
                const int g = m / p->Mg;
                const float *xg = panel ? panel + (long)(g - gfirst) * p->Cg * plane
                                        : x + (n * p->C + (long)g * p->Cg) * plane;
                float *ob = out + (n * p->Cout + m) * (long)p->Ho * p->Wo;
                switch (T) {
                case NV: FN(stile)(xg, tp, e, ob, p, ys, xs, skip, m, q, rb, NV); break;
#if NV > 4
                case 4: FN(stile)(xg, tp, e, ob, p, ys, xs, skip, m, q, rb, 4); break;
#endif
#if NV > 3
                case 3: FN(stile)(xg, tp, e, ob, p, ys, xs, skip, m, q, rb, 3); break;
#endif
#if NV > 2
                case 2: FN(stile)(xg, tp, e, ob, p, ys, xs, skip, m, q, rb, 2); break;
#endif
                default: FN(stile)(xg, tp, e, ob, p, ys, xs, skip, m, q, rb, 1); break;
                }
            }
            k += T;
        }
    }
    free(panel);
    return 0;
}
