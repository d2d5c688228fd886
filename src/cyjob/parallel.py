"""``Parallel``: joblib's API over the cyjob core.

``Parallel(...)`` resolves its arguments and the active config into a plan
(``_plan.py``: checked once, immutable, cached); each call asks the plan's
backend for an executor and hands the tasks to ``cyjob._dispatch.Call``,
which does the work.
"""

import sys
import types
import warnings

from cyjob import _plan
from cyjob._batching import DEFAULT_MIN_BATCH_SECONDS, DEFAULT_TARGET_SECONDS, BatchSizer
from cyjob._dispatch import Call, InlineExecutor
from cyjob._pool import in_worker_thread
from cyjob._progress import ProgressBar, VerboseReporter, combine, verbose_stream
from cyjob.backends import PROCESS_BACKEND_NAMES
from cyjob.backends.sequential import SequentialBackend
from cyjob.config import default

__all__ = ["Parallel"]

_SEQUENTIAL = SequentialBackend()
_modules = sys.modules
_WORKER_MODULE = "cyjob.backends.processes.worker"
# Window used with pre_dispatch="all": every batch may be in flight at once.
_UNBOUNDED = 1 << 40


class Parallel:
    """Run ``delayed`` tasks in parallel; a drop-in for ``joblib.Parallel``.

    Parameters
    ----------
    n_jobs : int or None, default=None
        Workers.  None takes ``parallel_config``'s value, else the backend's
        default (1, run in the caller's thread; -1 for dask), which the
        ``n_jobs`` attribute then holds, as in joblib.  Negative values
        count from the CPUs: -1 is all of them, -2 all but one.  0 is an
        error.
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
        to ``temp_folder`` (default: the JOBLIB_TEMP_FOLDER environment
        variable, else /dev/shm when it has room, else the system temp dir)
        and reach the workers as ``np.memmap`` opened with ``mmap_mode``
        (default "r").
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

    # The Call of this instance still producing results (a generator's).
    _running = None
    # Inside `with`: an executor (or a joblib.Parallel) kept for the block.
    _warm = None

    # `Parallel[list[int]]` in annotations evaluated at run time (the stubs
    # make the class generic for type checkers).
    __class_getitem__ = classmethod(types.GenericAlias)

    @property
    def _backend(self):
        return self._plan.backend

    def __repr__(self):
        return self._plan.label

    def __enter__(self):
        if self._plan.via_joblib:
            self._warm = self._plan.backend.joblib_parallel(self)
            self._warm.__enter__()
            return self
        # Start the workers now; pools stay up between calls.
        executor = self._make_executor()
        if getattr(executor, "reusable", False):
            # (Process workers: the block's calls share their dumped arrays,
            # which stay in temp_folder until the block ends, as in joblib.)
            executor.keep_memory()
            self._warm = executor
        return self

    def __exit__(self, *exc_info):
        warm, self._warm = self._warm, None
        if self._plan.via_joblib and warm is not None:
            warm.__exit__(*exc_info)
        elif warm is not None:
            warm.close()

    def _print(self, msg):
        """Write a progress message: stderr below verbose=50, stdout from 50
        (joblib's streams and format; a subclass may send them elsewhere)."""
        if self._plan.verbose:
            verbose_stream(self._plan.verbose).write(f"[{self}]: {msg}\n")

    def _make_executor(self):
        plan = self._plan
        backend, n_workers = plan.backend, plan.n_workers
        if n_workers > 1:
            if in_worker_thread():
                # Nested inside one of our threads: the outer call already keeps
                # every core busy, and waiting on the same pool could deadlock.
                _warn_nested(plan.backend_name, "threads")
                n_workers = 1
            else:
                # In a worker process: "multiprocessing" if its call asked for
                # that backend (joblib's daemonic workers), else "processes".
                # (getattr: another thread may be importing it right now.)
                worker = _modules.get(_WORKER_MODULE)
                if worker is not None and getattr(worker, "IN_WORKER", False):
                    below = "multiprocessing" if worker.CALLED_AS == "multiprocessing" else "processes"
                    if _warn_nested(plan.backend_name, below):
                        n_workers = 1  # joblib's rule, which the warning announced
        if n_workers == 1 and not backend.runs_elsewhere:
            backend = _SEQUENTIAL
        return backend.executor(n_workers, plan)

    def __call__(self, iterable):
        """Run the tasks of ``iterable``; return their results as ``return_as`` says."""
        plan = self._plan
        running = self._running
        if running is not None and not running.finished:
            message = "This Parallel instance is already running !"
            if plan.return_as != "list":
                message += (" Before submitting new tasks, you must wait for the completion "
                            "of all the previous tasks, or clean all references to the "
                            "output generator.")
            raise RuntimeError(message)
        if plan.via_joblib:
            return self._call_joblib(iterable)
        executor = self._warm
        if executor is None:
            executor = self._make_executor()
        n_workers = executor.n_workers
        # (The plan's fields read once each: a NamedTuple field costs an
        # attribute lookup, and this runs for every call.)
        lazy = plan.return_as != "list"
        timeout = plan.timeout
        verbose = plan.verbose
        inline = n_workers == 1 and type(executor) is InlineExecutor
        if inline and timeout is not None:
            warnings.warn(
                "The backend class 'SequentialBackend' does not support timeout. You have "
                f"set 'timeout={timeout}' in Parallel but the 'timeout' parameter "
                "will not be used.", UserWarning, stacklevel=2)
        if verbose:
            name = "SequentialBackend" if inline else type(plan.backend).__name__
            self._print(f"Using backend {name} with {n_workers} concurrent workers.")
        window_of = plan.window
        if window_of is None:
            iterable = list(iterable)
            window = _UNBOUNDED
        else:
            window = window_of(n_workers)
        fixed = plan.fixed_batch_size
        if n_workers == 1 and not fixed:
            # One thread: nothing to balance.  A generator output computes
            # each result on demand (as joblib's sequential backend does); a
            # list of tasks goes in batches as large as allowed; a lazy input
            # is still read only a little ahead (the automatic sizes).
            if lazy:
                fixed = 1
            elif type(iterable) is list or type(iterable) is tuple:
                fixed = plan.one_thread_batch_size
        if inline and lazy:
            window = 1  # read no further ahead than the results asked for
        target = DEFAULT_TARGET_SECONDS
        if timeout is not None:
            # The time-out bounds the wait for one result: a batch, plus the
            # ones queued before it, must take well under it.
            target = min(target, timeout / 10)
        # An executor whose round trip per batch is costly (processes, dask)
        # says how long a batch must at least be to amortise it.
        min_batch = getattr(executor, "min_batch_seconds", DEFAULT_MIN_BATCH_SECONDS)
        sizer = BatchSizer(n_workers, fixed, plan.max_batch_size, target, min_batch)
        progress = reporter = bar = None
        if verbose or plan.progress:
            bar = ProgressBar() if plan.progress else None
            reporter = VerboseReporter(self._print, verbose, above=bar) if verbose else None
            progress = combine(reporter, bar)
        call = Call(executor, sizer, iterable, window, plan.ordered, timeout, progress)
        if reporter is not None:
            call.log = reporter.say  # the thread pool's notes (stuck workers replaced)
        self._running = call
        if not lazy:
            try:
                return call.collect()
            finally:
                self._running = None
                if bar is not None:
                    bar.close()  # (after an error: a finished call closed it)
        if not inline:
            # Results start computing before the first next(), as with joblib;
            # in the caller's thread, each is computed when asked for.
            call.start()
        results = _results(call, bar)
        next(results)  # enter the try block, so that closing it early aborts the call
        return results

    def _call_joblib(self, iterable):
        """Run a call on a backend written for joblib's API, through joblib.Parallel."""
        runner = self._warm if self._warm is not None else self._plan.backend.joblib_parallel(self)
        if self._plan.verbose:
            self._print(f"Handing this call to joblib.Parallel: {self._plan.backend.name} is a "
                        "backend written for joblib's API")
        return runner(iterable)


def _plan_property(name):
    return property(lambda self: getattr(self._plan, name),
                    doc=f"The ``{name}`` this Parallel runs with (the active config applied).")


# joblib's public attributes, read from the plan.
for _name in ("n_jobs", "verbose", "return_as", "timeout", "pre_dispatch", "batch_size",
              "prefer", "require", "temp_folder", "max_nbytes", "mmap_mode", "progress"):
    setattr(Parallel, _name, _plan_property(_name))
del _name


def _warn_nested(backend_name, below):
    """joblib's warnings for process-based calls nested where joblib cannot
    run them on processes: below worker threads, multiprocessing below any
    worker process, loky below multiprocessing's workers.  True if it warned
    (the call then runs with n_jobs=1, as in joblib)."""
    if backend_name == "multiprocessing":
        where = {"threads": " below threads", "processes": ", below loky"}.get(below, "")
        message = f"Multiprocessing-backed parallel loops cannot be nested{where}, setting n_jobs=1"
    elif backend_name in PROCESS_BACKEND_NAMES and below == "threads":
        message = "Loky-backed parallel loops cannot be nested below threads, setting n_jobs=1"
    elif backend_name in PROCESS_BACKEND_NAMES and below == "multiprocessing":
        message = "Loky-backed parallel loops cannot be called in a multiprocessing, setting n_jobs=1"
    else:
        return False
    warnings.warn(message, UserWarning, stacklevel=4)
    return True


def _results(call, bar=None):
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
        if bar is not None:
            bar.close()  # (after an error or an early close: a finished call closed it)
