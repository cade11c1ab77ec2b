"""Build of the optional native ALS kernels; everything else is in pyproject.toml.

``optional=True``: without a C compiler the install still succeeds; mfrec/native.py then
compiles the kernels at first use if a compiler turns up, else training uses the torch steps
of mfrec/als.py.
"""

import importlib.util
import sys
from pathlib import Path

from setuptools import Extension, setup

_spec = importlib.util.spec_from_file_location("mfrec_build", Path(__file__).parent / "mfrec" / "_build.py")
build = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(build)

setup(ext_modules=[Extension(
    "mfrec._native", ["mfrec/_native.c"],
    extra_compile_args=[] if sys.platform == "win32" else build.FLAGS,
    define_macros=[("MFREC_SOURCE_DIGEST", build.digest_macro(build.source_digest()))],
    optional=True)])
