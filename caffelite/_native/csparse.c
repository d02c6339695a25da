/* caffelite._native._csparse: sparse direct 2-D convolution forward for the CPU (an optional compiled helper).
 *
 * Why: models trained with caffe-jacinto's sparsity have ~80% zero convolution weights; the dense kernel
 * (cconv.c) multiplies by them anyway. Here each output channel keeps only its nonzero (input channel, ky, kx)
 * taps, packed once when the weights are loaded (caffelite/ops/sparse_conv.py). Two kernels, chosen per layer
 * by the Python side:
 *   - row-block (sparse_cols_kernel.h): the input a tile of output rows x pixel vectors reads is copied once per
 *     input-channel chunk into an aligned L1 block shared by all the group's output channels; each tap is then
 *     an aligned vector load and a multiply-add per pixel vector;
 *   - direct (sparse_kernel.h): tap x shifted input row vectors for up to 8 pixel vectors at a time (4 in the
 *     portable build), unaligned loads, no copy: for groups with few output channels.
 * One vector load per multiply-add either way (the dense kernel shares a load among 8 output channels), so
 * sparse wins only when enough weights are zero: the break-even zero fraction is measured by
 * bench/sparse_breakeven.py.
 *
 * Plain C called through ctypes, which releases the GIL; the Python side splits the task range over threads.
 * Each output value is computed by one task in a fixed order: results do not depend on the thread count.
 * Instruction sets are chosen at run time (AVX-512, AVX2+FMA, portable), as in cconv.c.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdlib.h>

struct sgeom {
    int N, C, Hp, S, Wq;  /* input: images, channels, padded rows, stride_w phases, columns per phase */
    int Cout, Cg, Mg;     /* output channels, input and output channels per group */
    int sh, Ho, Wo;       /* row stride, output size */
    int rg, mb;           /* task: output rows, output channels */
    int nch;              /* input-channel chunks summed one after the other (partial sums in the output) */
    int kc, kh, kw, dh;   /* row-block kernel: input channels per chunk, kernel rows, columns, row dilation */
    int ni, rt, vt;       /* row-block kernel: block rows per (channel, kernel column), tile rows, tile vectors */
    int H, W, ph, pw;     /* with panels (hl > 0): the raw input's size and padding (panel.h) */
    int hl;               /* rows of a task's panel (0: x is the whole padded, phase-split input) */
};

struct sparse_taps {
    const int32_t *ptr;
    const long *off;  /* per tap: where it reads, relative to the pixel's origin in its group's input */
    const float *val;
};

/* the row-block kernel's taps (sparse_cols_kernel.h) */
struct cols_taps {
    const int32_t *ptr;
    const uint16_t *off;  /* floats from the block's start: blocks are at most 64K floats */
    const float *val;
    const long *otab;
};

/* the dense kernel's epilogue (cconv.c): + bias; * scale + shift when scale is set; (leaky) ReLU when relu */
struct epilogue {
    const float *bias, *scale, *shift;
    int relu;
    float slope;
};

#include "isa.h"
#include "panel.h"

#define VW 4
#define NV 4
#define FN(x) x##_generic
#define TARGET
#include "sparse_kernel.h"
#include "sparse_cols_kernel.h"
#undef VW
#undef NV
#undef FN
#undef TARGET

#if HAVE_X86
#define VW 8
#define NV 8
#define FN(x) x##_avx2
#define TARGET TARGET_AVX2
#include "sparse_kernel.h"
#include "sparse_cols_kernel.h"
#undef VW
#undef NV
#undef FN
#undef TARGET

#define VW 16
#define NV 8
#define FN(x) x##_avx512
#define TARGET TARGET_AVX512
#include "sparse_kernel.h"
#include "sparse_cols_kernel.h"
#undef VW
#undef NV
#undef FN
#undef TARGET
#endif

int cs_isa_mask(void) { return cpu_isa_mask(); }
int cs_geom_size(void) { return (int)sizeof(struct sgeom); }
int cs_taps_size(void) { return (int)sizeof(struct sparse_taps); }
int cs_cols_taps_size(void) { return (int)sizeof(struct cols_taps); }
int cs_epilogue_size(void) { return (int)sizeof(struct epilogue); }
int cs_vector_width(int isa) { return isa == 2 ? 16 : isa == 1 ? 8 : 4; }
/* pixels per output tile (vector width x vectors): the Python side sizes the input-channel chunks by it */
int cs_tile_pixels(int isa) { return isa == 2 ? 16 * 8 : isa == 1 ? 8 * 8 : 4 * 4; }

/* Forward for tasks t0..t1; isa is 0 (portable), 1 (AVX2) or 2 (AVX-512). With p->hl > 0 (both kernels), x is the
 * raw input (N, C, H, W) and each task pads the rows it reads into a panel (panel.h); the tap offsets are then
 * offsets in a panel of p->hl rows. -1: no memory. */
int cs_sparse_fwd(int isa, const float *x, const struct sparse_taps *tp, const struct epilogue *e, float *out,
                  const struct sgeom *p, long t0, long t1)
{
    if (p->Wo < cs_vector_width(isa)) return -4;
#if HAVE_X86
    if (isa == 2) return sfwd_avx512(x, tp, e, out, p, t0, t1);
    if (isa == 1) return sfwd_avx2(x, tp, e, out, p, t0, t1);
#endif
    if (isa != 0) return -2;
    return sfwd_generic(x, tp, e, out, p, t0, t1);
}

/* Row-block forward (sparse_cols_kernel.h) for tasks t0..t1: tiles of p->rt (1..4 or 8) output rows x p->vt
 * (1..2) vectors (at most 8 vectors, 4 in the portable build), p->vt * vector width <= Wo. */
int cs_sparse_cols_fwd(int isa, const float *x, const struct cols_taps *tp, const struct epilogue *e, float *out,
                       const struct sgeom *p, long t0, long t1)
{
    const int vw = cs_vector_width(isa);
    if (p->Wo < vw) return -4;
    if (p->rt < 1 || (p->rt > 4 && p->rt != 8) || p->vt < 1 || p->vt > 2 || p->rt * p->vt > cs_tile_pixels(isa) / vw
        || p->vt * vw > p->Wo || p->ni < (p->rt - 1) * p->sh + (p->kh - 1) * p->dh + 1
        || (long)p->kc * p->kw * p->ni * p->vt * vw > 65536)
        return -3;
#if HAVE_X86
    if (isa == 2) return cfwd_avx512(x, tp, e, out, p, t0, t1);
    if (isa == 1) return cfwd_avx2(x, tp, e, out, p, t0, t1);
#endif
    if (isa != 0) return -2;
    return cfwd_generic(x, tp, e, out, p, t0, t1);
}

static struct PyModuleDef csparse_module = {PyModuleDef_HEAD_INIT, "_csparse",
                                            "Sparse convolution kernels, called through ctypes.", -1, NULL};

PyMODINIT_FUNC PyInit__csparse(void) { return PyModule_Create(&csparse_module); }
