"""A joblib backend named "cyjob": libraries that call joblib run on cyjob's threads.

``cyjob.register_joblib_backend()`` registers :class:`CyjobBackend` with
joblib; then, under ``with joblib.parallel_config(backend="cyjob"):``, every
``joblib.Parallel`` (scikit-learn's included) hands its batches to cyjob's
Cython thread pool instead of a ``multiprocessing.pool.ThreadPool``.

What changes against joblib's own "threading" backend:

* a batch reaches a worker through cyjob's C queue, and its completion
  callback runs in that worker (joblib's pool goes through a task-handler and
  a result-handler thread: two GIL hand-offs per batch);
* ``batch_size="auto"`` batches on threads too, with cyjob's batch sizer fed
  the time each batch took to run (joblib's threading backend never batches);
* a ``Parallel`` nested in one of the tasks runs sequentially in that worker.

This module imports joblib; ``import cyjob`` does not.
"""

from joblib.parallel import ParallelBackendBase, register_parallel_backend
from joblib._parallel_backends import FallbackToBackend, SequentialBackend

from cyjob._batching import BatchSizer
from cyjob._dispatch import Call
from cyjob._pool import in_worker_thread
from cyjob.backends.threads import get_pool
from cyjob._cpus import n_workers
from cyjob.exceptions import chain_remote_traceback, traceback_text

__all__ = ["CyjobBackend", "register"]


class _JobCall(Call):
    """One joblib batch sent to the pool as a one-task cyjob call.

    It is also the future-like object joblib gets back from ``submit``: the
    worker that runs the batch stores the outcome here, then runs joblib's
    completion callback, which reads it through ``retrieve_result_callback``.
    """

    def __init__(self, backend, func, callback):
        super().__init__(backend._pool, _one_task_sizer(), [(func, (), {})], 1, False)
        self.backend = backend
        self.n_tasks = len(func) if hasattr(func, "__len__") else 1
        self.callback = callback
        self.result = None
        self.exception = None

    def batch_done(self, batch, results, error, duration_ns):
        super().batch_done(batch, results, error, duration_ns)  # frees the batch's tasks
        backend = self.backend
        backend._jobs.discard(self)
        if results is None and error is None:
            return  # skipped: joblib aborted the call and waits for nothing
        if error is None:
            self.result = results[0]
            sizer = backend._sizer
            if sizer is not None:
                sizer.observe(self.n_tasks, duration_ns)
        else:
            self.exception = error
        if self.callback is not None:
            self.callback(self)


def _one_task_sizer():
    return BatchSizer(1, 1)


class CyjobBackend(ParallelBackendBase):
    """joblib backend running batches on cyjob's thread pool.

    Parameters
    ----------
    nesting_level : int, optional
        Set by joblib.
    inner_max_num_threads : int, optional
        Accepted for joblib's API; threads share the process's BLAS pools.
    max_batch_size : int, optional
        Upper bound on automatic batches (default 10,000, as in ``cyjob.Parallel``).
    """

    supports_retrieve_callback = True
    uses_threads = True
    supports_sharedmem = True
    default_n_jobs = 1

    def __init__(self, nesting_level=None, inner_max_num_threads=None,
                 max_batch_size=None, **backend_kwargs):
        super().__init__(nesting_level=nesting_level,
                         inner_max_num_threads=inner_max_num_threads, **backend_kwargs)
        self.max_batch_size = max_batch_size
        self.parallel = None
        self._pool = None
        self._n_jobs = 1
        self._sizer = None
        # Batches submitted and not finished: abort_everything cancels them.
        self._jobs = set()

    def effective_n_jobs(self, n_jobs):
        """Threads for ``n_jobs`` (joblib's meaning; 1 inside a cyjob worker)."""
        workers = n_workers(n_jobs)
        return 1 if in_worker_thread() else workers

    def configure(self, n_jobs=1, parallel=None, **backend_kwargs):
        """Pick the pool for this ``Parallel`` call; return its worker count."""
        n_jobs = self.effective_n_jobs(n_jobs)
        if n_jobs == 1:
            # One worker (or nested in a worker): the caller's thread does it all.
            raise FallbackToBackend(SequentialBackend(nesting_level=self.nesting_level))
        self.parallel = parallel
        self._n_jobs = n_jobs
        self._pool = get_pool(n_jobs)
        if self.max_batch_size is None:
            self._sizer = BatchSizer(n_jobs)
        else:
            self._sizer = BatchSizer(n_jobs, 0, self.max_batch_size)
        return n_jobs

    def compute_batch_size(self):
        """Tasks per batch for ``batch_size="auto"``, from measured run times."""
        sizer = self._sizer
        if sizer is None:
            return 1
        return sizer.next_size(-1)

    def batch_completed(self, batch_size, duration):
        # joblib's figure includes the time a batch waited in the queue; the
        # sizer already got the run time from the worker (_JobCall.batch_done).
        pass

    def submit(self, func, callback=None):
        """Queue joblib's batch callable on the pool; return its future-like."""
        job = _JobCall(self, func, callback)
        self._jobs.add(job)
        job.start()
        return job

    def retrieve_result_callback(self, out):
        """The batch's result list, or raise the error of its failed task."""
        error = out.exception
        if error is not None:
            out.exception = None
            raise chain_remote_traceback(error, traceback_text(error))
        result, out.result = out.result, None
        return result

    def start_call(self):
        """Drop tasks joblib sliced for an earlier call that failed.

        joblib 1.6 keeps tasks it read ahead (``Parallel._ready_batches``)
        across calls of a ``with Parallel(...)`` block and never empties that
        queue on an error, so they run as part of the next call and their
        results show up in its output (loky does it too).  joblib's threading
        backend never batches, so it never reads ahead; this one does.
        """
        ready = getattr(self.parallel, "_ready_batches", None)
        if ready is not None:
            while not ready.empty():
                try:
                    ready.get_nowait()
                except Exception:  # queue.Empty: a racing consumer got it
                    break

    def abort_everything(self, ensure_ready=True):
        """Skip every batch still queued (running ones finish)."""
        jobs, self._jobs = list(self._jobs), set()
        for job in jobs:
            # A batch still running finishes later: its callback must not
            # land in the next call of a Parallel that reuses this backend.
            job.callback = None
            job.abort()

    def terminate(self):
        # The pool is shared with cyjob.Parallel and stays warm for the next call.
        self._sizer = None

    def get_nested_backend(self):
        """Nested calls run sequentially in the worker that makes them."""
        nesting_level = (self.nesting_level or 0) + 1
        return SequentialBackend(nesting_level=nesting_level), None

    def __reduce__(self):
        return (CyjobBackend, ())


def register(name="cyjob", make_default=False):
    """Register :class:`CyjobBackend` with joblib under ``name``."""
    if not isinstance(name, str) or not name:
        raise TypeError(f"name must be a non-empty string, got {name!r}")
    register_parallel_backend(name, CyjobBackend, make_default=make_default)
    return CyjobBackend
