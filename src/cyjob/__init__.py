"""cyjob: run Python tasks in parallel, fast.  A drop-in for joblib's
``Parallel`` / ``delayed`` whose scheduler core is written in Cython and C.

>>> from cyjob import Parallel, delayed
>>> Parallel(n_jobs=2)(delayed(pow)(x, 2) for x in range(5))
[0, 1, 4, 9, 16]
"""

from cyjob._core import delayed
from cyjob.backends import register_parallel_backend
from cyjob.backends.auto import gil_bound, nogil
from cyjob.config import cpu_count, effective_n_jobs, parallel_backend, parallel_config
from cyjob.exceptions import TerminatedWorkerError, TimeoutError
from cyjob.parallel import Parallel

__version__ = "0.1.0"

__all__ = [
    "Parallel",
    "delayed",
    "parallel_config",
    "parallel_backend",
    "register_parallel_backend",
    "cpu_count",
    "effective_n_jobs",
    "TimeoutError",
    "TerminatedWorkerError",
    "nogil",
    "gil_bound",
]
