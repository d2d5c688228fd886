"""Threads: the Cython pool of nogil workers, shared by every call."""

import atexit
import itertools
import os
import threading

from cyjob._dispatch import ThreadExecutor
from cyjob._pool import ThreadPool
from cyjob.backends.base import Backend
from cyjob.backends.sequential import SequentialBackend

# Pools by (threads, caller helps), started on first use and shared by every
# call (and every Python thread) that asks for the same.
_pools: "dict[tuple[int, bool], ThreadExecutor]" = {}
# Pools whose threads start as the default backend's first call finds it
# needs them (get_pool(lazy=True), grow_pool): moved to _pools once complete.
_growing: "dict[tuple[int, bool], ThreadExecutor]" = {}
_pools_lock = threading.RLock()
_pool_ids = itertools.count()
_exiting = False


def get_pool(n_workers, caller_helps=False, lazy=False):
    """A shared pool running ``n_workers`` batches of a call at once: with
    ``caller_helps``, n_workers - 1 threads plus the waiting caller while its
    tasks are short, the pool of n_workers threads otherwise (see
    ``ThreadExecutor``).  ``lazy``: none of its threads started yet, if it
    was not started already: its user starts them with ``grow_pool``."""
    key = (n_workers - caller_helps, caller_helps)
    pool = _pools.get(key)
    if pool is not None:
        return pool
    if _exiting:
        # Daemon threads still calling Parallel during exit: run their tasks
        # in their own thread instead of starting workers that would be
        # frozen mid-task.
        return SequentialBackend().executor(1)
    with _pools_lock:
        pool = _pools.get(key)
        if (pool is not None and pool.pool.alive()
                and (pool.full is None or pool.full.pool.alive())):
            return pool
        pool = _growing.get(key)
        if pool is not None and pool.pool.alive():
            return pool if lazy else grow_pool(pool)
        full = None
        if caller_helps:
            full = get_pool(n_workers)  # (the lock is an RLock)
            if not isinstance(full, ThreadExecutor):
                return full  # exiting
        threads = ThreadPool(key[0], name=f"cyjob-worker-{next(_pool_ids)}",
                             start=0 if lazy else None)
        pool = ThreadExecutor(threads, caller_helps, full)
        if lazy:
            _growing[key] = pool
        else:
            _growing.pop(key, None)
            _pools[key] = pool
    return pool


def grow_pool(pool, n_threads=None):
    """Start threads of a pool from ``get_pool(lazy=True)`` until
    ``n_threads`` (default: all of them) run; return it."""
    with _pools_lock:
        pool.pool.start_threads(-1 if n_threads is None else n_threads)
        key = (pool.pool.n_threads, pool.caller_helps)  # get_pool's key for it
        if len(pool.pool.threads) >= pool.pool.n_threads and _growing.get(key) is pool:
            del _growing[key]
            _pools[key] = pool
    return pool


def pool_complete(n_workers):
    """Whether the pool of ``n_workers`` threads (no caller helping) has
    started all its threads."""
    return (n_workers, False) in _pools


def started_pool(n_workers, caller_helps=False):
    """The pool ``get_pool`` would return, if it is made already (else None)."""
    key = (n_workers - caller_helps, caller_helps)
    return _pools.get(key) or _growing.get(key)


def shutdown_pools(wait=True, timeout=2.0, at_exit=False):
    """Stop every worker thread (at exit, or to free them in a test)."""
    with _pools_lock:
        pools = list(_pools.values()) + list(_growing.values())
        _pools.clear()
        _growing.clear()
    for pool in pools:
        pool.pool.shutdown(wait=wait, timeout=timeout, at_exit=at_exit)


def _shutdown_at_exit():
    global _exiting
    _exiting = True
    shutdown_pools(at_exit=True)


def _forget_pools_after_fork():
    # The child has none of the parent's threads, and the parent's queue locks
    # may be held by threads that no longer exist: start afresh, lazily.
    global _pools_lock
    _pools.clear()
    _growing.clear()
    _pools_lock = threading.RLock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pools_after_fork)
# Workers must be stopped before finalisation: a thread that takes the GIL
# once the interpreter is finalising hangs or crashes (CORE_NOTES).
atexit.register(_shutdown_at_exit)


class ThreadingBackend(Backend):
    name = "threading"
    supports_sharedmem = True

    def executor(self, n_workers, plan=None):
        # A caller that returns a list has nothing else to do while it waits,
        # so it works as one of the n_jobs workers while its tasks are short.
        # A generator's caller is busy with the results, and a caller running
        # a task could not notice a time-out: those get n_jobs threads.  So
        # does the main thread, the one signal handlers run in: stuck in a
        # task that waits in C without the GIL, it would get Ctrl-C only when
        # that task returns.  (It loses little: a call of a few tiny tasks
        # goes to one worker in one batch, see MIN_SPLIT_NS in _batching, and
        # the hand-offs with that worker avoid sleeping on each other's CPU,
        # see cyj_whereabouts in csrc/cyj_sync.h.)
        helps = (plan is None or (plan.return_as == "list" and plan.timeout is None)) \
            and threading.current_thread() is not threading.main_thread()
        return get_pool(n_workers, helps and n_workers > 1)
