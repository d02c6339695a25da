"""Build hook for the optional compiled kernels; everything else is configured in pyproject.toml.

The extension is optional: without a C compiler the install succeeds and caffelite runs on NumPy only.
"""

from setuptools import Extension, setup

setup(ext_modules=[
    Extension("caffelite._native._cconv", sources=["caffelite/_native/cconv.c"],
              depends=["caffelite/_native/conv_kernel.h", "caffelite/_native/panel.h", "caffelite/_native/isa.h"],
              extra_compile_args=["-O3", "-std=gnu11"], optional=True),
    Extension("caffelite._native._cbn", sources=["caffelite/_native/cbn.c"],
              depends=["caffelite/_native/isa.h", "caffelite/_native/isa_instances.h"],
              extra_compile_args=["-O3", "-std=gnu11"], optional=True),
    Extension("caffelite._native._csparse", sources=["caffelite/_native/csparse.c"],
              depends=["caffelite/_native/sparse_kernel.h", "caffelite/_native/sparse_cols_kernel.h",
                       "caffelite/_native/panel.h", "caffelite/_native/isa.h"],
              extra_compile_args=["-O3", "-std=gnu11"], optional=True),
    # -ffp-contract=off: the integer kernel's double epilogue must round as its NumPy reference does
    Extension("caffelite._native._cint8", sources=["caffelite/_native/cint8.c"],
              depends=["caffelite/_native/cint8_kernel.h", "caffelite/_native/cint8_undef.h",
                       "caffelite/_native/cint8_singles.h", "caffelite/_native/cint8_quads.h",
                       "caffelite/_native/cint8_sparse_tile.h",
                       "caffelite/_native/qround.h", "caffelite/_native/isa.h"],
              extra_compile_args=["-O3", "-std=gnu11", "-ffp-contract=off"], optional=True),
    # -ffp-contract=off: the deconvolution's sums must round as their NumPy reference (no fused multiply-adds)
    Extension("caffelite._native._cglue", sources=["caffelite/_native/cglue.c"],
              depends=["caffelite/_native/isa.h", "caffelite/_native/isa_instances.h"],
              extra_compile_args=["-O3", "-std=gnu11", "-ffp-contract=off"], optional=True),
    # the int8 engine's non-convolution steps; -ffp-contract=off: float32 sums and the double quantizer must
    # round as the engine's NumPy steps do
    Extension("caffelite._native._ci8glue", sources=["caffelite/_native/ci8glue.c"],
              depends=["caffelite/_native/isa.h", "caffelite/_native/qround.h"],
              extra_compile_args=["-O3", "-std=gnu11", "-ffp-contract=off"], optional=True),
    # the thread pool the kernels above run on (Python's pool costs tens of microseconds a call)
    Extension("caffelite._native._cpool", sources=["caffelite/_native/cpool.c"],
              extra_compile_args=["-O2", "-std=gnu11", "-pthread"], extra_link_args=["-pthread"], optional=True),
])
