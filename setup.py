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
        # The one place for Cython directives: no .pyx carries a `# cython:`
        # header (it would override these, and a debug build would check
        # nothing; tests/test_architecture.py keeps it so).
        directives = {"language_level": 3, "embedsignature": True,
                      "boundscheck": debug, "wraparound": debug}
        # Generated C is reused while the sources are unchanged: regenerate it
        # all when the directives differ from the last build's (a release
        # build after a debug one must not keep the bounds checks, nor the
        # other way round).
        stamp = os.path.join("build", "cyjob-directives.txt")
        mode = repr(sorted(directives.items())) + repr(MODULE_DIRECTIVES)
        try:
            with open(stamp) as f:
                stale = f.read() != mode
        except OSError:
            stale = True
        compiled = []
        for ext in self.distribution.ext_modules:
            compiled += cythonize(
                [ext],
                compiler_directives={**directives, **MODULE_DIRECTIVES.get(ext.name, {})},
                annotate=_flag("CYJOB_ANNOTATE"),
                force=stale or sanitize,
            )
        os.makedirs("build", exist_ok=True)
        with open(stamp, "w") as f:
            f.write(mode)
        self.distribution.ext_modules[:] = compiled
        super().finalize_options()


# The core, one compiled module per job, joined by .pxd cimports:
#   _tasks     delayed, task coercion, flat batches, the per-task loop
#   _batching  the batch-size rule
#   _pool      the thread pool, its nogil worker loop, submit()
#   _dispatch  Batch, executors, Router, Call
CORE_MODULES = ("_tasks", "_batching", "_pool", "_dispatch")
# C division (no zero check, C's sign rule) where every divisor is known to be
# positive; the batch-size rule keeps Python's (a zero duration must raise).
MODULE_DIRECTIVES = {f"cyjob.{m}": {"cdivision": True} for m in ("_tasks", "_pool", "_dispatch")}


def _ext(name):
    return Extension(
        f"cyjob.{name}",
        [f"src/cyjob/{name}.pyx"],
        include_dirs=["csrc"],
        depends=["csrc/cyj_sync.h", "csrc/cyj_queue.h"]
        + [f"src/cyjob/{m}.pxd" for m in ("_sync",) + CORE_MODULES],
    )


setup(
    ext_modules=[_ext(name) for name in CORE_MODULES]
    + [Extension("cyjob.cache._canon", ["src/cyjob/cache/_canon.pyx"])],
    cmdclass={"build_ext": CythonBuildExt},
)
