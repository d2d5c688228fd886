"""Processes: the backend, and the executor that pickles each batch once, in
the caller's thread, before handing it to the pool (``pool.py``)."""

import os
import pickle

from cyjob._dispatch import Executor, InlineExecutor
from cyjob.backends.processes import pool as _pool_module
from cyjob.backends.processes import worker
from cyjob.backends.processes.pool import Job, get_pool, shutdown_pool, tasks_text
from cyjob.backends.processes.wire import dumps
from cyjob.backends.base import Backend
from cyjob.backends.threads import ThreadingBackend
from cyjob._cpus import cpu_count
from cyjob.exceptions import PoolShutdownError

__all__ = ["ProcessBackend", "ProcessExecutor", "shutdown_pool", "THREAD_LIMIT_VARS"]

#: Thread-count variables of BLAS/OpenMP/numba/numexpr set in the workers.
THREAD_LIMIT_VARS = (
    "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "BLIS_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS", "NUMBA_NUM_THREADS", "NUMEXPR_NUM_THREADS",
)


# --------------------------------------------------------------------------
# the executor and the backend

sharedmem = None  # cyjob.backends.processes.sharedmem, imported on first use
_INLINE = InlineExecutor()


def thread_limits(n_workers, inner=None):
    """The values of THREAD_LIMIT_VARS for workers of a call of ``n_workers``
    (``inner``: parallel_config's inner_max_num_threads)."""
    default = str(inner if inner is not None else max(cpu_count() // n_workers, 1))
    environ = os.environ
    return tuple(environ.get(var, default) for var in THREAD_LIMIT_VARS)


class ProcessExecutor(Executor):
    """Runs a call's batches on the shared pool of worker processes.

    Parameters
    ----------
    n_workers : int
    max_nbytes, temp_folder, mmap_mode
        Large-array sharing, as given to ``Parallel``.
    inner_max_num_threads : int or None
        BLAS/OpenMP threads per worker (default: the CPUs / n_workers).
    """

    # A batch's round trip (pickle, socket, wake-up, results) costs ~0.2 ms:
    # batches of at least 10 ms keep it near 2% (benchmarks/bench_processes.py,
    # 240 x 2 ms tasks: 1.55x -> 1.32x of the bound with 4-task batches).
    min_batch_seconds = 0.010

    def __init__(self, n_workers, max_nbytes=1 << 20, temp_folder=None, mmap_mode="r",
                 inner_max_num_threads=None):
        super().__init__(n_workers)
        self.max_nbytes = max_nbytes
        self.temp_folder = temp_folder
        self.mmap_mode = mmap_mode
        self.limits = thread_limits(n_workers, inner_max_num_threads)
        self._calls = {}  # id(call) -> CallMemory
        self.pool = get_pool()
        self._ensure()
        # Imported after the workers are asked for: cloudpickle loads in this
        # process while the fork server boots (cold start).
        global sharedmem
        if sharedmem is None:
            from cyjob.backends.processes import sharedmem

    def _ensure(self):
        pool = self.pool
        if (pool.closed or pool.pid != os.getpid()) and not _pool_module.exiting:
            self.pool = pool = get_pool()
        if pool.target != (self.n_workers, self.limits):
            env = dict(os.environ)
            env.update(zip(THREAD_LIMIT_VARS, self.limits))
            pool.ensure(self.n_workers, self.limits, env)

    def ready(self):
        """True once the fork server has started a worker: batches sent now
        start within milliseconds (before, they wait for it to boot)."""
        pool = self.pool
        return any(w.pid is not None for w in list(pool.active))

    def submit(self, batch):
        if _pool_module.exiting:
            # A daemon thread still calling at exit: the pool is gone; run
            # the batch here (claimed by a router, maybe: unclaim it first).
            batch.claimed = False
            _INLINE.submit(batch)
            return
        self._ensure()
        memory = self._calls.get(id(batch.call))
        if memory is None:
            memory = self._calls[id(batch.call)] = sharedmem.CallMemory(
                self.max_nbytes, self.temp_folder, self.mmap_mode)
        payload, buffers = _pickle_tasks(batch, memory)
        if memory.folder is not None and memory.watched is None:
            # The fork server outlives a caller killed with SIGKILL: it
            # removes the folders it was told of.
            memory.watched = memory.folder
            self.pool.watch_folder(memory.folder, True)
        self.pool.submit(Job(batch, payload, buffers, self.pool.next_token()))

    def call_finished(self, call):
        self.pool.call_finished(call)
        memory = self._calls.pop(id(call), None)
        if memory is not None:
            memory.cleanup()
            if memory.watched is not None:
                self.pool.watch_folder(memory.watched, False)


def _pickle_tasks(batch, memory):
    """Pickle a batch once; name the task and argument that cannot be pickled."""
    try:
        return dumps(batch.tasks, sharedmem.TaskPickler, memory)
    except Exception as exc:
        where = _find_unpicklable(batch, memory)
        raise pickle.PicklingError(
            f"Could not pickle {where} to send it to a worker process: "
            f"{type(exc).__name__}: {exc}") from exc


def _find_unpicklable(batch, memory):
    flat = batch.tasks
    for i in range(len(flat) // 3):
        func, args, kwargs = flat[3 * i: 3 * i + 3]
        index = batch.start + i
        parts = [(f"the function of task {index} ({worker._describe(func)})", func)]
        parts += [(f"argument {j} of task {index}", a) for j, a in enumerate(args)]
        parts += [(f"keyword argument {k!r} of task {index}", v) for k, v in kwargs.items()]
        for label, obj in parts:
            try:
                dumps(obj, sharedmem.TaskPickler, memory)
            except Exception:
                return label
    return tasks_text(batch)


class ProcessBackend(Backend):
    """Worker processes from a fork server, shared by every call."""

    name = "processes"
    supports_sharedmem = False

    def executor(self, n_workers, plan=None):
        if worker.IN_WORKER:
            # Nested in one of our workers: threads there, never processes
            # (every worker starting a pool of its own is a fork bomb).
            return ThreadingBackend().executor(n_workers, plan)
        try:
            if plan is None:
                return ProcessExecutor(n_workers)
            return ProcessExecutor(n_workers, plan.max_nbytes, plan.temp_folder, plan.mmap_mode,
                                   plan.inner_max_num_threads)
        except PoolShutdownError:
            if _pool_module.exiting:
                return _INLINE  # a daemon thread at exit: no new pool
            raise
