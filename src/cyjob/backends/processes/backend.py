"""Processes: the backend, and the executor that pickles each batch once, in
the caller's thread, before handing it to the pool (``pool.py``)."""

import os
import pickle

from cyjob._batching import PROCESS_MIN_BATCH_SECONDS
from cyjob._dispatch import Executor, InlineExecutor
from cyjob.backends.processes import pool as _pool_module
from cyjob.backends.processes import worker
from cyjob.backends.processes.pool import Job, get_pool, shutdown_pool, tasks_text
from cyjob.backends.processes.wire import dumps
from cyjob.backends.base import Backend
from cyjob.backends.threads import ThreadingBackend
from cyjob._cpus import cpu_count
from cyjob.exceptions import PoolShutdownError, TempFolderError

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
    """The values of THREAD_LIMIT_VARS for workers of a call of ``n_workers``:
    ``inner`` (parallel_config's inner_max_num_threads) if given, else the
    caller's own setting of each variable, else cpu_count // n_workers
    (joblib's precedence)."""
    if inner is not None:
        return (str(inner),) * len(THREAD_LIMIT_VARS)
    default = str(max(cpu_count() // n_workers, 1))
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
    initializer, initargs
        ``initializer(*initargs)`` runs once in each worker before its first
        task (joblib's process backends take them too).  Workers started with
        another initializer, or other arguments, are replaced.
    """

    #: One executor may run the calls of a ``with Parallel(...)`` block, whose
    #: large arrays then stay dumped until the block ends (``close``): the
    #: calls share them, and ``temp_folder`` holds them meanwhile, as joblib's.
    reusable = True
    #: The backend name the call gave ("loky", "multiprocessing"...), if any.
    called_as = None

    min_batch_seconds = PROCESS_MIN_BATCH_SECONDS

    def __init__(self, n_workers, max_nbytes=1 << 20, temp_folder=None, mmap_mode="r",
                 inner_max_num_threads=None, initializer=None, initargs=()):
        super().__init__(n_workers)
        self.max_nbytes = max_nbytes
        self.temp_folder = temp_folder
        self.mmap_mode = mmap_mode
        self.limits = thread_limits(n_workers, inner_max_num_threads)
        self.init = _pickle_initializer(initializer, initargs)
        self.key = (self.limits, self.init)
        self._calls = {}  # id(call) -> CallMemory
        self._shared_memory = None  # while kept for a `with` block: every call's
        # Calls that sent batches referring to the block's arrays and have not
        # finished (a generator's may outlive the block), and the block's
        # memory once the block ended before them: removed when they finish.
        self._shared_users = {}  # id(call) -> call
        self._ended_memory = None
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
        if pool.target != (self.n_workers, self.key):
            env = dict(os.environ)
            env.update(zip(THREAD_LIMIT_VARS, self.limits))
            pool.ensure(self.n_workers, self.key, env, self.init)

    def keep_memory(self):
        """Share one set of dumped arrays between the calls until ``close``."""
        if self._shared_memory is None:
            self._shared_memory = sharedmem.CallMemory(
                self.max_nbytes, self.temp_folder, self.mmap_mode)

    def close(self):
        """Remove the arrays kept for a ``with`` block (once the calls still
        running with them, a generator's, have finished)."""
        memory, self._shared_memory = self._shared_memory, None
        if memory is None:
            return
        if self._shared_users:
            # Batches in flight refer to its files: a worker that opened
            # them after they are gone would fail the call.
            self._ended_memory = memory
        else:
            self._remove(memory)

    def _remove(self, memory):
        memory.cleanup()
        if memory.watched is not None:
            self.pool.watch_folder(memory.watched, False)

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
        call = batch.call
        memory = self._shared_memory
        if memory is not None:  # a with-block's: every call shares its arrays
            self._shared_users[id(call)] = call
        elif id(call) in self._shared_users:  # the block ended while this call runs
            memory = self._ended_memory
        else:
            memory = self._calls.get(id(call))
            if memory is None:
                memory = self._calls[id(call)] = sharedmem.CallMemory(
                    self.max_nbytes, self.temp_folder, self.mmap_mode)
        payload, buffers = _pickle_tasks(batch, memory, self.called_as)
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
            self._remove(memory)
        if self._shared_users.pop(id(call), None) is not None and not self._shared_users:
            memory, self._ended_memory = self._ended_memory, None
            if memory is not None:
                self._remove(memory)


def _pickle_initializer(initializer, initargs):
    if initializer is None:
        return None
    if not callable(initializer):
        raise TypeError(f"initializer must be callable, got {type(initializer).__name__}")
    import cloudpickle

    try:
        return cloudpickle.dumps((initializer, tuple(initargs)))
    except Exception as exc:
        raise pickle.PicklingError(
            f"Could not pickle the initializer {worker._describe(initializer)} or its "
            f"initargs to send them to the worker processes: {type(exc).__name__}: {exc}"
        ) from exc


def _pickle_tasks(batch, memory, called_as=None):
    """Pickle a batch once, with the backend name the call asked for (the
    worker's nested calls follow joblib's rules for it); name the task and
    argument that cannot be pickled."""
    try:
        return dumps((called_as, batch.tasks), sharedmem.TaskPickler, memory)
    except TempFolderError:
        raise  # the folder's fault, which it names: no argument to blame
    except Exception as exc:
        where = _find_unpicklable(batch, memory)
        # "the task to send": joblib's (loky's) words, which code matches on.
        raise pickle.PicklingError(
            f"Could not pickle the task to send it to a worker process: {where} "
            f"cannot be pickled: {type(exc).__name__}: {exc}") from exc


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
        init = {key: self.backend_params[key] for key in ("initializer", "initargs")
                if key in self.backend_params}
        try:
            if plan is None:
                return ProcessExecutor(n_workers, **init)
            executor = ProcessExecutor(n_workers, plan.max_nbytes, plan.temp_folder,
                                       plan.mmap_mode, plan.inner_max_num_threads, **init)
        except PoolShutdownError:
            if _pool_module.exiting:
                return _INLINE  # a daemon thread at exit: no new pool
            raise
        executor.called_as = plan.backend_name
        return executor
