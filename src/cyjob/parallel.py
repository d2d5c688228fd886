"""``Parallel``: joblib's API over the cyjob core.

``Parallel(...)`` resolves its arguments and the active config into a plan
(``_plan.py``: checked once, immutable, cached); each call asks the plan's
backend for an executor and hands the tasks to ``cyjob._dispatch.Call``,
which does the work.
"""

import types

from cyjob import _plan
from cyjob._batching import DEFAULT_MIN_BATCH_SECONDS, DEFAULT_TARGET_SECONDS, BatchSizer
from cyjob._dispatch import Call
from cyjob._pool import in_worker_thread
from cyjob._progress import ProgressBar, VerboseReporter, combine
from cyjob.backends.sequential import SequentialBackend
from cyjob.config import default

__all__ = ["Parallel"]

_SEQUENTIAL = SequentialBackend()
# Window used with pre_dispatch="all": every batch may be in flight at once.
_UNBOUNDED = 1 << 40


class Parallel:
    """Run ``delayed`` tasks in parallel; a drop-in for ``joblib.Parallel``.

    Parameters
    ----------
    n_jobs : int or None, default=None
        Workers.  None takes ``parallel_config``'s value, else 1 (run in the
        caller's thread).  Negative values count from the CPUs: -1 is all of
        them, -2 all but one.  0 is an error.
    backend : str or Backend, default=None
        "threading" (cyjob's default: Cython worker threads), "sequential",
        "processes" (alias "loky", "multiprocessing": worker processes for
        GIL-bound Python), or a name given to ``register_parallel_backend``.
    return_as : {"list", "generator", "generator_unordered"}, default="list"
        A list of results in input order, a lazy generator in input order, or
        a generator in completion order.
    verbose : int, default=0
        Progress messages on stderr (stdout from 50), more often as it grows.
    timeout : float or None
        Raise :class:`cyjob.TimeoutError` (also a ``multiprocessing.TimeoutError``)
        when no result arrives for that many seconds.
    pre_dispatch : {"all", int, str}, default="2 * n_jobs"
        Batches in flight ahead of the results; an arithmetic expression of
        ``n_jobs`` is evaluated safely (never with ``eval``).
    batch_size : "auto" or int, default="auto"
        Tasks per batch; "auto" sizes batches from measured task durations.
    temp_folder, max_nbytes, mmap_mode
        Large-array sharing for process backends: numpy arrays over
        ``max_nbytes`` (default "1M", None: never) are written once per call
        to ``temp_folder`` (default /dev/shm when it has room) and reach the
        workers as ``np.memmap`` opened with ``mmap_mode`` (default "r").
    prefer : {"threads", "processes", None}
        Soft hint for the default backend.
    require : {"sharedmem", None}
        "sharedmem" forces a backend whose tasks share the caller's memory.
    max_batch_size : int or None, default=None
        Upper bound on automatic batches (cyjob extension; default 10,000).
    progress : bool, default=False
        Show a progress bar on stderr (tqdm if installed, else a built-in
        one), updated once per batch (cyjob extension).
    **backend_kwargs
        Passed to the backend's constructor.
    """

    def __init__(self, n_jobs=default(None), backend=default(None), return_as="list",
                 verbose=default(0), timeout=None, pre_dispatch="2 * n_jobs",
                 batch_size="auto", temp_folder=default(None),
                 max_nbytes=default("1M"), mmap_mode=default("r"),
                 prefer=default(None), require=default(None),
                 max_batch_size=None, progress=False, **backend_kwargs):
        self._plan = _plan.resolve(
            type(self).__name__, n_jobs, backend, return_as, verbose, timeout, pre_dispatch,
            batch_size, temp_folder, max_nbytes, mmap_mode, prefer, require, max_batch_size,
            progress, backend_kwargs)

    # `Parallel[list[int]]` in annotations evaluated at run time (the stubs
    # make the class generic for type checkers).
    __class_getitem__ = classmethod(types.GenericAlias)

    @property
    def _backend(self):
        return self._plan.backend

    def __repr__(self):
        return self._plan.label

    def __enter__(self):
        self._make_executor()  # start the workers now; pools stay up between calls
        return self

    def __exit__(self, *exc_info):
        pass

    def _make_executor(self):
        plan = self._plan
        backend, n_workers = plan.backend, plan.n_workers
        if n_workers > 1 and in_worker_thread():
            # Nested inside one of our threads: the outer call already keeps
            # every core busy, and waiting on the same pool could deadlock.
            n_workers = 1
        if n_workers == 1:
            backend = _SEQUENTIAL
        return backend.executor(n_workers, plan)

    def __call__(self, iterable):
        """Run the tasks of ``iterable``; return their results as ``return_as`` says."""
        plan = self._plan
        executor = self._make_executor()
        n_workers = executor.n_workers
        lazy = plan.return_as != "list"
        if plan.window is None:
            iterable = list(iterable)
            window = _UNBOUNDED
        else:
            window = plan.window(n_workers)
        fixed = plan.fixed_batch_size
        if n_workers == 1 and not fixed:
            # One thread: nothing to balance.  A generator output computes
            # each result on demand (as joblib's sequential backend does); a
            # list of tasks goes in batches as large as allowed; a lazy input
            # is still read only a little ahead (the automatic sizes).
            if lazy:
                fixed = 1
            elif type(iterable) is list or type(iterable) is tuple:
                fixed = plan.one_thread_batch_size()
        target = DEFAULT_TARGET_SECONDS
        if plan.timeout is not None:
            # The time-out bounds the wait for one result: a batch, plus the
            # ones queued before it, must take well under it.
            target = min(target, plan.timeout / 10)
        # An executor whose round trip per batch is costly (processes, dask)
        # says how long a batch must at least be to amortise it.
        min_batch = getattr(executor, "min_batch_seconds", DEFAULT_MIN_BATCH_SECONDS)
        sizer = BatchSizer(n_workers, fixed, plan.max_batch_size, target, min_batch)
        progress = reporter = None
        if plan.verbose or plan.progress:
            reporter = VerboseReporter(plan.label, plan.verbose) if plan.verbose else None
            progress = combine(reporter, ProgressBar() if plan.progress else None)
        call = Call(executor, sizer, iterable, window, plan.ordered, plan.timeout, progress)
        if reporter is not None:
            call.log = reporter.say  # the thread pool's notes (stuck workers replaced)
        if not lazy:
            return call.collect()
        call.start()
        results = _results(call)
        next(results)  # enter the try block, so that closing it early aborts the call
        return results


def _plan_property(name):
    return property(lambda self: getattr(self._plan, name),
                    doc=f"The ``{name}`` this Parallel runs with (the active config applied).")


# joblib's public attributes, read from the plan.
for _name in ("n_jobs", "verbose", "return_as", "timeout", "pre_dispatch", "batch_size",
              "prefer", "require", "temp_folder", "max_nbytes", "mmap_mode", "progress"):
    setattr(Parallel, _name, _plan_property(_name))
del _name


def _results(call):
    try:
        yield  # primed by Parallel.__call__ (as joblib does)
        while True:
            batch = call.next_batch()
            if batch is None:
                return
            yield from batch.results
    finally:
        # Closed or garbage-collected halfway: cancel what is left.
        if not call.finished:
            call.abort()
