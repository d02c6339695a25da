/* Shared by the kernel libraries: whether the x86 builds exist, their function attributes, the CPU's instruction
 * sets and the per-build dispatch of an entry point. Each library exports its own entry point around
 * cpu_isa_mask(). */
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

/* The body of an entry point: call build `isa` (0 portable, 1 AVX2, 2 AVX-512) of kernel `name` (instantiated as
 * name##_generic / _avx2 / _avx512) with `args` and return its result; -2 for a build this binary lacks. The ##
 * suffix has to follow the function name, so the three calls are spelled out. */
#if HAVE_X86
#define ISA_CALL(isa, name, args)                              \
    do {                                                       \
        if ((isa) == 2) return name##_avx512 args;              \
        if ((isa) == 1) return name##_avx2 args;                \
        if ((isa) == 0) return name##_generic args;             \
        return -2;                                             \
    } while (0)
#else
#define ISA_CALL(isa, name, args)                              \
    do {                                                       \
        if ((isa) == 0) return name##_generic args;             \
        return -2;                                             \
    } while (0)
#endif

#endif
