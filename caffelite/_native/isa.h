/* Shared by the kernel libraries (cconv.c, cbn.c): whether the x86 builds exist, their function attributes,
 * and the CPU's instruction sets. Each library exports its own entry point around cpu_isa_mask(). */
#ifndef CAFFELITE_ISA_H
#define CAFFELITE_ISA_H

#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
#define HAVE_X86 1
#else
#define HAVE_X86 0
#endif

#define TARGET_AVX2 __attribute__((target("avx2,fma")))
#define TARGET_AVX512 __attribute__((target("avx512f,avx512dq,avx512vl,fma")))

/* Instruction sets this CPU can run: bit 0 portable, bit 1 AVX2+FMA, bit 2 AVX-512 (F, DQ, VL). */
static inline int cpu_isa_mask(void)
{
    int mask = 1;
#if HAVE_X86
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) mask |= 2;
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl"))
        mask |= 4;
#endif
    return mask;
}

#endif
