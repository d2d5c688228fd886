"""Processes: a pool of worker processes for GIL-bound Python tasks.

Names: "processes", and joblib's "loky" and "multiprocessing".

* ``backend.py``     the backend and its executor (pickles each batch once)
* ``pool.py``        the process-wide pool: workers, I/O thread, failures
* ``wire.py``        the message format on the workers' sockets
* ``worker.py``      a worker process's loop
* ``forkserver.py``  the fork server that forks the workers
* ``sharedmem.py``   large numpy arrays shared through memory-mapped files
"""

from cyjob.backends.processes.backend import (
    THREAD_LIMIT_VARS, ProcessBackend, ProcessExecutor, shutdown_pool,
)

__all__ = ["ProcessBackend", "ProcessExecutor", "shutdown_pool", "THREAD_LIMIT_VARS"]
