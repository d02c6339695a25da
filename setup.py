"""Build hook for the optional compiled kernels; everything else is configured in pyproject.toml.

The extension is optional: without a C compiler the install succeeds and caffelite runs on NumPy only.
"""

from setuptools import Extension, setup

setup(ext_modules=[
    Extension("caffelite._native._cconv", sources=["caffelite/_native/cconv.c"],
              depends=["caffelite/_native/conv_kernel.h", "caffelite/_native/isa.h"],
              extra_compile_args=["-O3", "-std=gnu11"], optional=True),
    Extension("caffelite._native._cbn", sources=["caffelite/_native/cbn.c"], depends=["caffelite/_native/isa.h"],
              extra_compile_args=["-O3", "-std=gnu11"], optional=True),
])
