/* caffelite._native._cconv: direct 2-D convolution kernels for the CPU (an optional compiled helper).
 *
 * Why: on jsegnet21v2's grouped 3x3 layers (8-16 channels per group) im2col + BLAS spends most of its time
 * building a column matrix 9x the input and in GEMMs with 8-16 rows, which BLAS runs far below peak. A direct
 * kernel keeps an 8-channel x 32-pixel output tile in registers and reads each input row in place.
 *
 * The functions are plain C called through ctypes (caffelite/ops/native.py), which releases the GIL, so the
 * Python side splits the task range over threads. Each output element is computed by one task in a fixed
 * order, so results do not depend on the thread count. The NumPy path in caffelite/ops/conv.py stays the
 * reference; tests compare the two. Instruction sets are chosen at run time (AVX-512, AVX2+FMA, portable).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdlib.h>

#define MB 8          /* output channels per forward tile (weights are packed in blocks of MB) */
#define MAX_KW 32

struct geom {
    int N, C, Hp, S, Wq;      /* input: images, channels, padded rows, stride_w phases, columns per phase */
    int Cout, G, Cg, Mg, nmb; /* output channels, groups, in/out channels per group, MB-blocks per group */
    int kh, kw, sh, dh;       /* kernel, row stride, row dilation */
    int Ho, Wo;               /* output size */
    int rg, bg;               /* forward chunk: output rows, channel blocks */
    int kc;                   /* forward: input channels summed per pass over a chunk */
    int H, W, ph, pw;         /* forward with panels (hl > 0): the raw input's size and padding (panel.h) */
    int hl;                   /* forward: rows of a task's panel (0: x is the whole padded, phase-split input) */
    long tap_off[MAX_KW];     /* offset of kernel column j inside a phase-split row: phase*Wq + column */
};

/* What the forward applies to each output value after the sums: + bias[m]; then, when scale is set,
 * * scale[m] + shift[m] (an inference BatchNorm/Scale folded in); then, when relu is set, a (leaky) ReLU. */
struct epilogue {
    const float *bias, *scale, *shift;
    int relu;
    float slope;
};

#include "isa.h"
#include "panel.h"

/* portable build: 4-wide vectors (SSE2 on x86-64, NEON on arm64), compiled for the baseline target */
#define VW 4
#define NV 2
#define DW_MB 4
#define DW_MB5 2
#define FN(x) x##_generic
#define TARGET
#include "conv_kernel.h"
#undef VW
#undef NV
#undef DW_MB
#undef DW_MB5
#undef FN
#undef TARGET

#if HAVE_X86
#define VW 8
#define NV 1
#define DW_MB 4
#define DW_MB5 2
#define FN(x) x##_avx2
#define TARGET TARGET_AVX2
#include "conv_kernel.h"
#undef VW
#undef NV
#undef DW_MB
#undef DW_MB5
#undef FN
#undef TARGET

#define VW 16
#define NV 3
#define DW_MB 8
#define DW_MB5 4
#define FN(x) x##_avx512
#define TARGET TARGET_AVX512
#include "conv_kernel.h"
#undef VW
#undef NV
#undef DW_MB
#undef DW_MB5
#undef FN
#undef TARGET
#endif

/* Instruction sets this CPU can run (isa.h). */
int cl_isa_mask(void) { return cpu_isa_mask(); }

int cl_geom_size(void) { return (int)sizeof(struct geom); }
int cl_tile_channels(void) { return MB; }

int cl_epilogue_size(void) { return (int)sizeof(struct epilogue); }

/* Forward (or a stride-1 data gradient with flipped weights) for tasks t0..t1; isa is 0, 1 or 2. With p->hl > 0,
 * x is the raw input (N, C, H, W) and each task pads the rows it reads into a panel (panel.h); -3: no memory. */
/* Floats per vector of an instruction set's build: output rows must be at least this wide (the kernels have
 * no scalar path; narrower maps stay on the NumPy path, caffelite/ops/native.py). */
int cl_vector_width(int isa) { return isa == 2 ? 16 : isa == 1 ? 8 : 4; }

int cl_conv_fwd(int isa, const float *x, const float *wpk, const struct epilogue *e, float *out,
                const struct geom *p, long t0, long t1)
{
    if (p->kw > MAX_KW) return -1;
    if (p->Wo < cl_vector_width(isa)) return -4;
#if HAVE_X86
    if (isa == 2) return fwd_avx512(x, wpk, e, out, p, t0, t1);
    if (isa == 1) return fwd_avx2(x, wpk, e, out, p, t0, t1);
#endif
    if (isa != 0) return -2;
    return fwd_generic(x, wpk, e, out, p, t0, t1);
}

/* Output channels per weight-gradient block for an instruction set and kernel width (0: not supported). */
int cl_dw_block(int isa, int kw)
{
    if (kw == 1 || kw == 3) return isa == 2 ? 8 : 4;
    if (kw == 5) return isa == 2 ? 4 : 2;
    return 0;
}

/* Weight gradient (kw 1, 3 or 5) for tasks t0..t1, accumulated into dw. p->rg: pixel rows per chunk,
 * p->bg: input channels per task. */
int cl_conv_dw(int isa, const float *x, const float *dy, float *dw, const struct geom *p, long t0, long t1)
{
    if (!cl_dw_block(isa, p->kw)) return -1;
    if (p->Wo < cl_vector_width(isa)) return -4;
#if HAVE_X86
    if (isa == 2) return dw_avx512(x, dy, dw, p, t0, t1);
    if (isa == 1) return dw_avx2(x, dy, dw, p, t0, t1);
#endif
    if (isa != 0) return -2;
    return dw_generic(x, dy, dw, p, t0, t1);
}

/* The module itself is empty: it exists so that setuptools builds and installs the shared library. */
static struct PyModuleDef cconv_module = {PyModuleDef_HEAD_INIT, "_cconv",
                                          "Direct convolution kernels, called through ctypes.", -1, NULL};

PyMODINIT_FUNC PyInit__cconv(void) { return PyModule_Create(&cconv_module); }
