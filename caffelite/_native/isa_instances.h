/* Instantiates the including file's kernels once per instruction set. The file defines ISA_SELF (its own name,
 * in quotes) and a KERNELS guard around its kernel half, then includes this header; each pass defines VW (float
 * lanes per vector), FN(x) (the name suffix: _generic, _avx2, _avx512) and TARGET (the function attribute).
 * Entry points then pick a build with ISA_CALL (isa.h). */

#define VW 4
#define FN(x) x##_generic
#define TARGET
#include ISA_SELF
#undef VW
#undef FN
#undef TARGET

#if HAVE_X86
#define VW 8
#define FN(x) x##_avx2
#define TARGET TARGET_AVX2
#include ISA_SELF
#undef VW
#undef FN
#undef TARGET

#define VW 16
#define FN(x) x##_avx512
#define TARGET TARGET_AVX512
#include ISA_SELF
#undef VW
#undef FN
#undef TARGET
#endif
