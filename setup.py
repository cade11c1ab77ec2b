"""Build of the optional native ALS kernels; everything else is in pyproject.toml.

``optional=True``: without a C compiler the install still succeeds and training uses the
torch steps of mfrec/als.py (mfrec/native.py explains the split).
"""

import sys

from setuptools import Extension, setup

# -ffp-contract=off: no fused multiply-adds, so the AVX-512, AVX2 and baseline builds of the
# kernels (mfrec/_native.c picks one at load time) give the same numbers bit for bit.
flags = [] if sys.platform == "win32" else ["-O3", "-ffp-contract=off"]

setup(ext_modules=[Extension("mfrec._native", ["mfrec/_native.c"], extra_compile_args=flags, optional=True)])
