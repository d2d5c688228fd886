"""Threads: the Cython pool of nogil workers, shared by every call."""

import atexit
import os
import threading

from cyjob._core import ThreadPool
from cyjob.backends.base import Backend

# Pools by worker count, started on first use and shared by every call (and
# every Python thread) that asks for that many workers.
_pools: "dict[int, ThreadPool]" = {}
_pools_lock = threading.Lock()


def get_pool(n_workers):
    pool = _pools.get(n_workers)
    if pool is not None:
        return pool
    with _pools_lock:
        pool = _pools.get(n_workers)
        if pool is None or not pool.alive():
            pool = ThreadPool(n_workers)
            _pools[n_workers] = pool
    return pool


def shutdown_pools(wait=True, timeout=2.0):
    """Stop every worker thread (at exit, or to free them in a test)."""
    with _pools_lock:
        pools = list(_pools.values())
        _pools.clear()
    for pool in pools:
        pool.shutdown(wait=wait, timeout=timeout)


def _forget_pools_after_fork():
    # The child has none of the parent's threads, and the parent's queue locks
    # may be held by threads that no longer exist: start afresh, lazily.
    global _pools_lock
    _pools.clear()
    _pools_lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pools_after_fork)
# Workers must be stopped before finalisation: a thread that takes the GIL
# once the interpreter is finalising hangs or crashes (CORE_NOTES).
atexit.register(shutdown_pools)


class ThreadingBackend(Backend):
    name = "threading"
    supports_sharedmem = True
    in_process = True

    def executor(self, n_workers, parallel=None):
        return get_pool(n_workers)
