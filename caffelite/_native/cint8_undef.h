/* Ends one instantiation of cint8_kernel.h: forgets the per-instruction-set macros cint8.c defined for it. */
#undef VW
#undef NV
#undef NVS
#undef VADD
#undef VEC
#undef VZERO
#undef VLOAD
#undef VSTORE
#undef VBCAST
#undef VDOT2
#undef FN
#undef TARGET
