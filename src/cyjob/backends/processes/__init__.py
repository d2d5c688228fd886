"""Processes: a pool of worker processes for GIL-bound Python tasks.

Names: "processes", and joblib's "loky" and "multiprocessing".

* ``backend.py``     the backend and its executor (pickles each batch once)
* ``pool.py``        the process-wide pool: workers, I/O thread, failures
* ``wire.py``        the message format on the workers' sockets
* ``worker.py``      a worker process's loop
* ``forkserver.py``  the fork server that forks the workers
* ``sharedmem.py``   large numpy arrays shared through memory-mapped files
"""


import importlib

__all__ = ["ProcessBackend", "ProcessExecutor", "shutdown_pool", "THREAD_LIMIT_VARS"]


def __getattr__(name):
    # Imported on first use: the fork server imports this package (its
    # forkserver module) and needs none of the parent's side, and the
    # default backend starts that server before it imports the rest.
    if name in __all__:
        value = getattr(importlib.import_module("cyjob.backends.processes.backend"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
