"""cyjob: run Python tasks in parallel, fast.  A drop-in for joblib's
``Parallel`` / ``delayed`` whose scheduler core is written in Cython and C.

>>> from cyjob import Parallel, delayed
>>> Parallel(n_jobs=2)(delayed(pow)(x, 2) for x in range(5))
[0, 1, 4, 9, 16]
"""

from cyjob._tasks import delayed
from cyjob.backends import register_parallel_backend
from cyjob.backends.auto import gil_bound, nogil
from cyjob.cache import hash
from cyjob.config import cpu_count, effective_n_jobs, parallel_backend, parallel_config
from cyjob.exceptions import TerminatedWorkerError, TimeoutError
from cyjob.parallel import Parallel

__version__ = "0.1.0"


def register_joblib_backend(name="cyjob", make_default=False):
    """Register cyjob's thread pool as a joblib backend.

    Then any library that calls joblib, scikit-learn first, runs on cyjob
    under ``with joblib.parallel_config(backend="cyjob"): ...``.  joblib is
    imported here, not by ``import cyjob``.

    Parameters
    ----------
    name : str, default="cyjob"
        The joblib backend name.
    make_default : bool, default=False
        Make it joblib's default backend.

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
]
