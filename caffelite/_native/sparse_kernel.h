/* One instantiation of the sparse direct-convolution forward for one vector width.
 *
 * Included by csparse.c once per instruction set with these macros defined:
 *   VW      floats per vector register      NV   pixel vectors per output tile (1..8)
 *   FN(x)   adds the instruction-set suffix  TARGET  the function attribute selecting the instruction set
 *
 * Layouts (float32 unless said, C order):
 *   x     phase-split padded input (N, C, Hp, S, Wq), as the dense kernel's (conv_kernel.h)
 *   ptr   (Cout, nch + 1) int32: the taps of output channel m reading input-channel chunk q (channels
 *         q*kc .. q*kc+kc-1 of its group) are ptr[m][q] .. ptr[m][q+1]-1
 *   idx   uint16 per tap: c*kh*kw + i*kw + j inside the channel's group, ascending (the dense kernel's order)
 *   val   float32 per tap: the nonzero weight
 *   otab  (Cg*kh*kw) long: where tap idx reads, relative to the pixel's origin in its group's input:
 *         c*plane + i*dh*S*Wq + tap_off[j]
 *   out   (N, Cout, Ho, Wo)
 * Each output value is one accumulator summed over the channel's taps in idx order, then + bias, * scale +
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
    const int *ys, const int *xs, const int *skip, int m, int q, const int T)
{
    FN(vec) acc[NV];
    long src0[NV];
    const long rowlen = (long)p->S * p->Wq;
#pragma GCC unroll 8
    for (int v = 0; v < T; v++) {
        src0[v] = (long)ys[v] * p->sh * rowlen + xs[v];
        acc[v] = q == 0 ? (FN(vec)){0} : *(const FN(uvec) *)(ob + (long)ys[v] * p->Wo + xs[v]);
    }
    const int32_t *cp = tp->ptr + (long)m * (p->nch + 1) + q;
    const int k1 = cp[1];
    for (int k = cp[0]; k < k1; k++) {
        const float *src = xg + tp->otab[tp->idx[k]];
        const float wk = tp->val[k];
#pragma GCC unroll 8
        for (int v = 0; v < T; v++) acc[v] += *(const FN(uvec) *)(src + src0[v]) * wk;
    }
    FN(sstore)(acc, e, ob, p, ys, xs, skip, m, q + 1 == p->nch, T);
}

/* Tasks t0..t1; a task is (image n, up to p->rg output rows, up to p->mb output channels). Inside a task:
 * input-channel chunks (p->kc channels), then pixel vectors, then channels. The input rows one chunk's taps
 * read for NV pixel vectors fit in L1 and are reused by every channel of the task: the kernel does one
 * vector load per multiply-add, so without that reuse L2 bandwidth would bound it. */
TARGET static void FN(sfwd)(const float *x, const struct sparse_taps *tp, const struct epilogue *e, float *out,
                            const struct sgeom *p, long t0, long t1)
{
    const int nrg = (p->Ho + p->rg - 1) / p->rg, nmc = (p->Cout + p->mb - 1) / p->mb;
    const long plane = (long)p->Hp * p->S * p->Wq;
    const int vrow = (p->Wo + VW - 1) / VW;
    for (long t = t0; t < t1; t++) {
        const long n = t / ((long)nrg * nmc);
        const int rgi = (int)(t / nmc % nrg), mci = (int)(t % nmc);
        const int y0 = rgi * p->rg, y1 = y0 + p->rg < p->Ho ? y0 + p->rg : p->Ho;
        const int m0 = mci * p->mb, m1 = m0 + p->mb < p->Cout ? m0 + p->mb : p->Cout;
        const int nvec = (y1 - y0) * vrow;
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
                const float *xg = x + (n * p->C + (long)g * p->Cg) * plane;
                float *ob = out + (n * p->Cout + m) * (long)p->Ho * p->Wo;
                switch (T) {
                case NV: FN(stile)(xg, tp, e, ob, p, ys, xs, skip, m, q, NV); break;
#if NV > 4
                case 4: FN(stile)(xg, tp, e, ob, p, ys, xs, skip, m, q, 4); break;
#endif
#if NV > 3
                case 3: FN(stile)(xg, tp, e, ob, p, ys, xs, skip, m, q, 3); break;
#endif
#if NV > 2
                case 2: FN(stile)(xg, tp, e, ob, p, ys, xs, skip, m, q, 2); break;
#endif
                default: FN(stile)(xg, tp, e, ob, p, ys, xs, skip, m, q, 1); break;
                }
            }
            k += T;
        }
    }
}
