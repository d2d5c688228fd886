"""Build the compiled core.

Switches (environment variables):
  CYJOB_DEBUG=1     -O0 -g, Cython bounds checks on (for gdb and the test suite)
  CYJOB_SANITIZE=1  AddressSanitizer + UBSan build (see README, "Developing")
  CYJOB_ANNOTATE=1  write Cython's annotated HTML next to the sources
"""

import os

from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


def _flag(name):
    return os.environ.get(name, "") not in ("", "0")


class CythonBuildExt(build_ext):
    """Runs cythonize at build time, so generated C never lives in the repo."""

    def finalize_options(self):
        debug, sanitize = _flag("CYJOB_DEBUG"), _flag("CYJOB_SANITIZE")
        cflags = ["-O0", "-g3"] if debug or sanitize else ["-O3"]
        ldflags = []
        if sanitize:
            san = ["-fsanitize=address,undefined", "-fno-omit-frame-pointer"]
            cflags += san
            ldflags += san
        for ext in self.distribution.ext_modules:
            ext.extra_compile_args = cflags + ["-Wno-unused-function"]
            ext.extra_link_args = ldflags
        directives = {"language_level": 3, "embedsignature": True}
        if debug:
            directives.update(boundscheck=True, wraparound=True)
        self.distribution.ext_modules[:] = cythonize(
            self.distribution.ext_modules,
            compiler_directives=directives,
            annotate=_flag("CYJOB_ANNOTATE"),
            force=debug or sanitize,
        )
        super().finalize_options()


def _ext(name):
    return Extension(
        f"cyjob.{name}",
        [f"src/cyjob/{name}.pyx"],
        include_dirs=["csrc"],
        depends=["csrc/cyj_sync.h", "csrc/cyj_queue.h", "src/cyjob/_sync.pxd"],
    )


setup(
    ext_modules=[
        _ext("_batching"),
        _ext("_core"),
        Extension("cyjob.cache._canon", ["src/cyjob/cache/_canon.pyx"]),
    ],
    cmdclass={"build_ext": CythonBuildExt},
)
