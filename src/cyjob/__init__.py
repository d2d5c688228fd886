"""cyjob: run Python tasks in parallel, fast.  A drop-in for joblib's
``Parallel`` / ``delayed`` whose scheduler core is written in Cython and C.

>>> from cyjob import Parallel, delayed
>>> Parallel(n_jobs=2)(delayed(pow)(x, 2) for x in range(5))
[0, 1, 4, 9, 16]
"""

import importlib
from typing import TYPE_CHECKING

from cyjob._tasks import delayed
from cyjob.backends import register_parallel_backend
from cyjob.backends.auto import gil_bound, nogil
from cyjob.config import cpu_count, effective_n_jobs, parallel_backend, parallel_config
from cyjob.exceptions import TerminatedWorkerError, TimeoutError
from cyjob.parallel import Parallel

if TYPE_CHECKING:
    from cyjob.cache import Memory, MemorizedResult, expires_after, hash, register_store_backend
    from cyjob.persist import dump, load, register_compressor

# Persistence and caching need numpy, inspect and friends, which `import
# cyjob` (for Parallel) does not pay for: their names are imported on first
# use (PEP 562).
_LAZY = {"dump": "cyjob.persist", "load": "cyjob.persist",
         "register_compressor": "cyjob.persist",
         "hash": "cyjob.cache", "Memory": "cyjob.cache", "MemorizedResult": "cyjob.cache",
         "expires_after": "cyjob.cache", "register_store_backend": "cyjob.cache"}


def __getattr__(name):
    if name in ("persist", "cache"):  # the subpackages themselves, also on first use
        return importlib.import_module(f"cyjob.{name}")
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'cyjob' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY))


__version__ = "0.1.0"



def register_joblib_backend(name="cyjob", make_default=False):
    """Register cyjob as a joblib backend, so that libraries that call joblib
    (scikit-learn first) run on it.

    One line at start-up makes every ``joblib.Parallel`` of the process use
    cyjob, with no change to the library's code::

        cyjob.register_joblib_backend(make_default=True)

    Without ``make_default``, choose it where wanted with
    ``with joblib.parallel_config(backend="cyjob"): ...`` (before
    registering, joblib answers ``Invalid backend: cyjob``).  Each joblib
    call is then routed as ``cyjob.Parallel``'s default backend routes a
    call: measured on threads, then GIL-bound batches to cyjob's process
    pool, GIL-free or waiting work on threads, tiny work without hand-offs;
    joblib's ``prefer``/``require`` hints win (see ``cyjob.joblib_bridge``).
    ``cyjob.parallel_config`` reaches those calls for what joblib leaves
    open (``n_jobs``, ``backend``, ``prefer``, ``require``,
    ``inner_max_num_threads``).  joblib is imported here, not by
    ``import cyjob``.

    Parameters
    ----------
    name : str, default="cyjob"
        The joblib backend name.
    make_default : bool, default=False
        Make it joblib's default backend: every ``joblib.Parallel`` that
        names no backend runs on cyjob.

    Returns
    -------
    type
        The registered ``joblib.parallel.ParallelBackendBase`` subclass.
    """
    from cyjob.joblib_bridge import register

    return register(name, make_default)


__all__ = [
    "Parallel",
    "delayed",
    "parallel_config",
    "parallel_backend",
    "register_parallel_backend",
    "register_joblib_backend",
    "cpu_count",
    "effective_n_jobs",
    "TimeoutError",
    "TerminatedWorkerError",
    "nogil",
    "gil_bound",
    "hash",
    "Memory",
    "MemorizedResult",
    "expires_after",
    "register_store_backend",
    "dump",
    "load",
    "register_compressor",
]
