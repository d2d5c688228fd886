"""``Parallel``: joblib's API over the cyjob core.

Everything here runs once per call: check the parameters, pick the backend and
its executor, and hand the tasks to ``cyjob._dispatch.Call``, which does the work.
"""

import types

from cyjob import _validation as check
from cyjob import backends as _backends
from cyjob._batching import (DEFAULT_MAX_BATCH_SIZE, DEFAULT_MIN_BATCH_SECONDS,
                             DEFAULT_TARGET_SECONDS, BatchSizer)
from cyjob._dispatch import Call
from cyjob._pool import in_worker_thread
from cyjob._progress import ProgressBar, VerboseReporter, combine
from cyjob.backends import default_backend_name, get_backend
from cyjob.backends.sequential import SequentialBackend
from cyjob.config import DEFAULTS, default, get_config, is_default

__all__ = ["Parallel"]

_SEQUENTIAL = SequentialBackend()
# Checked settings by the arguments that gave them, while no parallel_config
# is active: libraries build a Parallel per call in inner loops, always with
# the same arguments, and checking them again costs ~10 us on the cold caches
# a task leaves (benchmarks/bench_auto.py, 64 x 100 floats).
_CHECKED = {}
_CHECKED_MAX = 256
# Window used with pre_dispatch="all": every batch may be in flight at once.
_UNBOUNDED = 1 << 40


def _choose_backend(backend, prefer, require, backend_params):
    """joblib's precedence: explicit backend, then parallel_config's, then the
    default; require="sharedmem" forces a backend that shares memory."""
    if backend is not None:
        chosen = get_backend(backend, **backend_params)
        if require == "sharedmem" and not chosen.supports_sharedmem:
            raise ValueError(f"Backend {chosen.name!r} does not support shared memory "
                             "(require='sharedmem')")
        return chosen
    config = get_config()
    if config["backend"] is not None:
        chosen = get_backend(config["backend"], **{**config["backend_params"], **backend_params})
        if require != "sharedmem" or chosen.supports_sharedmem:
            return chosen
        return get_backend("threading")
    if require == "sharedmem" or prefer == "threads":
        return get_backend("threading")
    if prefer == "processes":
        return get_backend("processes", **backend_params)
    return get_backend(default_backend_name(), **backend_params)


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
        config = get_config()
        key = None
        if config is DEFAULTS and not backend_kwargs:
            args = (n_jobs, backend, return_as, verbose, timeout, pre_dispatch, batch_size,
                    temp_folder, max_nbytes, mmap_mode, prefer, require, max_batch_size,
                    progress)
            # With the types: 1, 1.0 and True are equal keys, not equally valid.
            key = (_backends.registry_version, args, tuple(map(type, args)))
            try:
                checked = _CHECKED.get(key)
            except TypeError:  # an unhashable argument: check it every time
                checked, key = None, None
            if checked is not None:
                self.__dict__.update(checked)
                self._warm = None
                return
        if n_jobs is None or is_default(n_jobs):
            n_jobs = config["n_jobs"]
        self.n_jobs = check.check_n_jobs(n_jobs)
        self.verbose = check.check_verbose(config["verbose"] if is_default(verbose) else verbose)
        self.return_as = check.check_choice("return_as", return_as, check.RETURN_AS)
        self.timeout = check.check_timeout(timeout)
        if not isinstance(progress, bool):
            raise TypeError(f"progress must be True or False, got {progress!r}")
        self.progress = progress
        self.pre_dispatch = pre_dispatch
        self._pre_dispatch = check.check_pre_dispatch(pre_dispatch)
        self.batch_size = batch_size
        self._fixed_batch_size = check.check_batch_size(batch_size)
        self._max_batch_size = check.check_max_batch_size(max_batch_size) or DEFAULT_MAX_BATCH_SIZE
        pick = config.get
        self.prefer = check.check_choice(
            "prefer", pick("prefer") if is_default(prefer) else prefer, check.PREFER)
        self.require = check.check_choice(
            "require", pick("require") if is_default(require) else require, check.REQUIRE)
        self.temp_folder = check.check_temp_folder(
            pick("temp_folder") if is_default(temp_folder) else temp_folder)
        self.max_nbytes = check.check_max_nbytes(
            pick("max_nbytes") if is_default(max_nbytes) else max_nbytes)
        self.mmap_mode = check.check_choice(
            "mmap_mode", pick("mmap_mode") if is_default(mmap_mode) else mmap_mode,
            check.MMAP_MODES)
        explicit_backend = None if is_default(backend) else backend
        self._backend = _choose_backend(explicit_backend, self.prefer, self.require,
                                        backend_kwargs)
        self._n_workers = self._backend.effective_n_jobs(self.n_jobs)
        self._warm = None  # inside `with`: an executor kept alive between calls
        if key is not None and self._backend is _backends.shared_backend(self._backend.name):
            # (Only the stateless built-in backends: dask's, say, holds a client.)
            if len(_CHECKED) >= _CHECKED_MAX:
                _CHECKED.clear()
            _CHECKED[key] = dict(vars(self))

    # `Parallel[list[int]]` in annotations evaluated at run time (the stubs
    # make the class generic for type checkers).
    __class_getitem__ = classmethod(types.GenericAlias)

    def __repr__(self):
        return f"{type(self).__name__}(n_jobs={self.n_jobs})"

    def __enter__(self):
        self._warm = self._make_executor()  # start the workers now
        return self

    def __exit__(self, *exc_info):
        self._warm = None

    def _make_executor(self):
        backend, n_workers = self._backend, self._n_workers
        if n_workers > 1 and in_worker_thread():
            # Nested inside one of our threads: the outer call already keeps
            # every core busy, and waiting on the same pool could deadlock.
            n_workers = 1
        if n_workers == 1:
            backend = _SEQUENTIAL
        return backend.executor(n_workers, self)

    def __call__(self, iterable):
        """Run the tasks of ``iterable``; return their results as ``return_as`` says."""
        executor = self._make_executor()
        n_workers = executor.n_workers
        lazy = self.return_as != "list"
        if self._pre_dispatch is None:
            iterable = list(iterable)
            window = _UNBOUNDED
        else:
            window = self._pre_dispatch(n_workers)
        fixed = self._fixed_batch_size
        if n_workers == 1 and not fixed:
            # One thread: nothing to balance.  A generator output computes
            # each result on demand (as joblib's sequential backend does); a
            # list of tasks goes in batches as large as allowed; a lazy input
            # is still read only a little ahead (the automatic sizes).
            if lazy:
                fixed = 1
            elif type(iterable) is list or type(iterable) is tuple:
                fixed = self._max_batch_size
        target = DEFAULT_TARGET_SECONDS
        if self.timeout is not None:
            # The time-out bounds the wait for one result: a batch, plus the
            # ones queued before it, must take well under it.
            target = min(target, self.timeout / 10)
        # An executor whose round trip per batch is costly (processes, dask)
        # says how long a batch must at least be to amortise it.
        min_batch = getattr(executor, "min_batch_seconds", DEFAULT_MIN_BATCH_SECONDS)
        sizer = BatchSizer(n_workers, fixed, self._max_batch_size, target, min_batch)
        progress = None
        if self.verbose or self.progress:
            progress = combine(VerboseReporter(repr(self), self.verbose) if self.verbose else None,
                               ProgressBar() if self.progress else None)
        call = Call(executor, sizer, iterable, window, self.return_as != "generator_unordered",
                    self.timeout, progress)
        if not lazy:
            return call.collect()
        call.start()
        results = _results(call)
        next(results)  # enter the try block, so that closing it early aborts the call
        return results


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
