"""A joblib backend named "cyjob": libraries that call joblib run on cyjob.

``cyjob.register_joblib_backend()`` registers :class:`CyjobBackend` with
joblib; then, under ``with joblib.parallel_config(backend="cyjob"):`` (or
everywhere, with ``make_default=True``), every ``joblib.Parallel``,
scikit-learn's included, hands its batches to cyjob.  Each joblib call is
routed as ``cyjob.Parallel``'s default backend routes a call
(backends/auto.py, backends/_probe.py):

* its first batches run on cyjob's thread pool and are measured (the
  threads' CPU time and their own voluntary/involuntary context switches);
* GIL-bound batches then go to cyjob's process pool (cloudpickle), and so
  do batches of work that releases the GIL only in short stretches (threads
  that waited for it often and used 0.5-1.7 CPUs between them:
  scikit-learn's HistGradientBoosting, a forest's predict: on processes,
  as with loky, each worker keeps its CPU busy).  Large
  numpy arguments are memory-mapped **once per joblib call**, whatever the
  number of batches that carry them (joblib's loky dumps them per batch);
  the caller's warning filters and scikit-learn config go along with every
  batch, and BLAS/OpenMP are capped in the workers (backends/processes/
  context.py);
* work that releases the GIL, or waits, stays on threads, where each
  batch starts OpenMP regions of at most CPUs / n_jobs threads (a per-thread
  limit, restored after the batch: _threadcaps.py), so that scikit-learn's
  OpenMP code on n threads does not oversubscribe the CPUs (joblib's
  threading backend caps nothing);
* tiny work runs in the caller's thread (``return_as="list"`` without a
  timeout; otherwise it stays on threads, in large batches);
* a choice that proves slower than threads were is undone within the call,
  and threads that turn out GIL-bound move to processes; choices are
  remembered per function (for a minute, shared with ``cyjob.Parallel``).

joblib's hints win over measurement: ``require="sharedmem"`` and
``prefer="threads"`` keep a call on threads, ``prefer="processes"`` sends it
to processes; so do ``cyjob.nogil`` / ``cyjob.gil_bound`` on the function.

``cyjob.parallel_config`` active in the calling thread reaches these calls
too, for what joblib leaves open: ``n_jobs`` (when neither the call nor
``joblib.parallel_config`` sets it), ``backend`` ("threading", "processes"
/ "loky" / "multiprocessing", "sequential"; others are ignored here),
``prefer``, ``require`` and ``inner_max_num_threads``.  joblib's own
settings win where both are given.
A ``Parallel`` nested in one of the tasks runs sequentially in the worker
that makes it.

This module imports joblib; ``import cyjob`` does not.
"""

import contextlib
import threading
import time
import types
from collections import deque
from functools import partial

from joblib.parallel import ParallelBackendBase, register_parallel_backend
from joblib._parallel_backends import FallbackToBackend, SequentialBackend

from cyjob._batching import DEFAULT_MAX_BATCH_SIZE, PROCESS_MIN_BATCH_SECONDS, BatchSizer
from cyjob._cpus import n_workers
from cyjob._dispatch import Call
from cyjob._pool import Job, in_worker_thread
from cyjob._threadcaps import capped, runtimes as openmp_runtimes
from cyjob._validation import check_inner_max_num_threads
from cyjob.backends._probe import (CONTENDED_SWITCHES, INLINE, MIN_OVERLAP_NS,
                                   PROCESS_MIN_TASK_NS, PROCESSES, THREADS, BatchFigures,
                                   Verdict, decide, running_ns)
from cyjob.backends.auto import (CHECK_MIN_BATCHES, CHECK_MIN_NS, CHECK_WINDOW,
                                 CORRECTION_MARGIN, PROBE_MAX_NS, _marker_of, memo,
                                 steady_remote_throughput)
from cyjob.backends.threads import get_pool
from cyjob.config import cpu_count as _cpus, get_config
from cyjob.exceptions import chain_remote_traceback, traceback_text

__all__ = ["CyjobBackend", "register"]

JOBLIB_BATCH_SECONDS = 0.05
# A batch sent to a process costs the CPU time of pickling and sending it
# here, and about as much again to receive and unpickle it in the worker
# (permutation_importance sends its fitted forest, a 700 KB pickle, with
# every task of ~40 ms).  Process batches last at least this many times that
# cost (overhead ~5%; joblib's loky pays it for every task)...
PAYLOAD_COST_FACTOR = 40
# ...but no longer than joblib's own smallest ideal batch (its
# MIN_IDEAL_BATCH_DURATION): longer ones would unbalance the end of a call.
PAYLOAD_MAX_BATCH_SECONDS = 0.2
# Work that releases the GIL only in short stretches between Python steps
# (scikit-learn's HistGradientBoosting fit, a forest's predict) keeps
# threads waiting for the GIL often (30-40 times per 10 ms of CPU measured
# for permutation_importance, 100-127 for HistGradientBoosting, against 5-10
# for pure Python), yet lets them use 1.3-1.5 CPUs between them, which
# ``decide`` reads as "releases the GIL" (or, past 100 waits, "waits").
# On processes each worker keeps its CPU busy, as with joblib's loky
# (HistGradientBoosting cross_val_score: 425 ms on processes, 623 on
# threads, loky 430, interleaved under load): threads that used fewer CPUs
# than this between them while waiting for the GIL go to processes...
MIXED_MAX_EFFICIENCY = 1.7
# ...if they used at least this many (a loaded machine leaves them under
# one; tasks that sleep or wait for I/O use a few hundredths).
MIXED_MIN_EFFICIENCY = 0.5


class _JobCall(Call):
    """One joblib batch sent to an executor as a one-task cyjob call.

    It is also the future-like object joblib gets back from ``submit``: the
    worker that runs the batch (or the process pool's I/O thread) stores the
    outcome here, then runs joblib's completion callback, which reads it
    through ``retrieve_result_callback``.
    """

    def __init__(self, backend, executor, func, callback, n_tasks, measure):
        super().__init__(executor, _one_task_sizer(), [(func, (), {})], 1, False)
        self.backend = backend
        self.n_tasks = n_tasks
        self.callback = callback
        self.result = None
        self.exception = None
        self.measure_cpu = measure

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
            route = backend._route
            if route is not None:
                route.batch_done(self, batch, duration_ns)
        else:
            self.exception = error
        if self.callback is not None:
            self.callback(self)


class _InlineJob:
    """A joblib batch run in the caller's thread (the future-like object)."""

    __slots__ = ("backend", "func", "callback", "n_tasks", "result", "exception")

    def __init__(self, backend, func, callback, n_tasks):
        self.backend = backend
        self.func = func
        self.callback = callback
        self.n_tasks = n_tasks
        self.result = None
        self.exception = None

    def run(self):
        func, self.func = self.func, None
        t0 = time.perf_counter_ns()
        try:
            self.result = func()
        except BaseException as exc:
            self.exception = exc
        duration_ns = time.perf_counter_ns() - t0
        backend = self.backend
        if self.exception is None:
            if backend._sizer is not None:
                backend._sizer.observe(self.n_tasks, duration_ns)
            if backend._route is not None:
                backend._route.inline_done(self.n_tasks, duration_ns)
        callback, self.callback = self.callback, None
        if callback is not None:
            callback(self)


def _one_task_sizer():
    return BatchSizer(1, 1)


def _function_of(func):
    """The user's function in joblib's batch (for markers and the memo)."""
    items = getattr(func, "items", None)
    if not items:
        return None
    function = items[0][0]
    # sklearn.utils.parallel.delayed wraps it (functools.update_wrapper).
    for _ in range(8):
        inner = getattr(function, "__wrapped__", None)
        if inner is None or type(function) is types.MethodType:
            break
        function = inner
    return function


def _mixed_verdict(batches, n_workers):
    """A processes verdict for threads that ran side by side yet waited for
    the GIL often (see ``MIXED_MAX_EFFICIENCY``), or None."""
    batches = [b for b in batches if b.n_tasks > 0 and b.cpu_ns > 0]
    if n_workers < 2 or len(batches) < 2:
        return None
    span, together = running_ns(batches)
    # GIL waits mean something only for batches that ran at the same time.
    if span <= 0 or together < max(MIN_OVERLAP_NS, span / 2):
        return None
    cpu = sum(b.cpu_ns for b in batches)
    efficiency = cpu / span
    waits = 10e6 * sum(b.voluntary for b in batches) / cpu
    cpu_per_task = cpu / sum(b.n_tasks for b in batches)
    if (MIXED_MIN_EFFICIENCY <= efficiency < MIXED_MAX_EFFICIENCY and waits >= CONTENDED_SWITCHES
            and cpu_per_task >= PROCESS_MIN_TASK_NS):
        return Verdict(PROCESSES, cpu_per_task,
                       f"threads used {efficiency:.2f} CPUs but waited for the GIL {waits:.1f} "
                       f"times per 10 ms of CPU ({cpu_per_task / 1e3:.1f} us of CPU per task): "
                       "processes share no GIL", True)
    return None


def _decide(batches, n_workers, last_chance=False):
    """The probe's verdict, with the bridge's rule for mixed work on top."""
    verdict = decide(batches, n_workers, last_chance)
    if verdict.kind == THREADS:
        return _mixed_verdict(batches, n_workers) or verdict
    return verdict


class _Route:
    """Where one joblib call's batches run, and the evidence for it: the
    policy of ``backends/auto.AutoExecutor`` on joblib's push-style calls."""

    def __init__(self, backend, n_jobs, kind, reason):
        self.backend = backend
        self.n_jobs = n_jobs
        self.kind = kind
        self.reason = reason
        self.fixed = kind is not None      # a hint or a marker: never measured
        self.function = None
        self.remembered = False
        self.figures = []                  # probe batches (threads)
        self.checked = []                  # (kind, n_tasks, duration_ns, finished_ns)
        self.threads_ns = 0.0              # wall ns per task the probe got on threads
        self.first_ns = None
        self.ns_per_task = 0.0
        self.corrected = False
        self.lock = threading.Lock()

    def begin(self, func):
        """The first batch: a marker or a remembered choice decides, else probe."""
        function = _function_of(func)
        self.function = function
        if self.kind is not None or function is None:
            return
        marker = _marker_of(function)
        if marker is not None:
            self.kind, self.fixed = marker, True
            self.reason = "marked"
            return
        remembered = memo.get(function)
        if remembered is not None:
            self.kind, self.ns_per_task, self.threads_ns = remembered[:3]
            # A choice that was itself a correction is not checked again.
            self.corrected = len(remembered) > 3 and remembered[3]
            self.remembered = True
            self.reason = "remembered from an earlier call"

    @property
    def measuring(self):
        """Batches on threads are measured while probing, and while a
        threads choice may still turn out GIL-bound."""
        return not self.fixed and (self.kind is None or (
            self.kind == THREADS and not self.corrected))

    def batch_done(self, job, batch, duration_ns):
        """A batch finished (in a worker thread or the process pool's thread)."""
        if self.fixed or self.corrected:
            return
        with self.lock:
            if self.kind is None:
                if batch.started_ns:
                    self._probe(batch, job.n_tasks)
            elif batch.started_ns == 0 or self.kind == THREADS:
                self._check(batch, job.n_tasks, duration_ns)

    def _probe(self, batch, n_tasks):
        self.figures.append(BatchFigures(batch.started_ns, batch.finished_ns, batch.cpu_ns,
                                         n_tasks, batch.voluntary, batch.involuntary,
                                         batch.waited_ns))
        if self.first_ns is None:
            self.first_ns = batch.started_ns
        last_chance = time.monotonic_ns() - self.first_ns >= PROBE_MAX_NS
        verdict = _decide(self.figures, self.n_jobs, last_chance)
        if verdict.kind is None:
            return
        n = sum(f.n_tasks for f in self.figures)
        # End to end, gaps between batches included, as the check of the
        # choice will measure it.
        span = (max(f.finished_ns for f in self.figures)
                - min(f.started_ns - f.waited_ns for f in self.figures))
        self.threads_ns = span / n if n else 0.0
        self._set(verdict.kind, verdict.ns_per_task, verdict.reason, verdict.remember)

    def inline_done(self, n_tasks, duration_ns):
        if not (self.fixed or self.corrected):
            self._check(None, n_tasks, duration_ns)

    def _check(self, batch, n_tasks, duration_ns):
        kind = self.kind
        if kind == THREADS:
            if not batch.started_ns:
                return
            self.figures.append(BatchFigures(
                batch.started_ns, batch.finished_ns, batch.cpu_ns, n_tasks,
                batch.voluntary, batch.involuntary, batch.waited_ns))
            window = self.figures[-CHECK_WINDOW:]
            if len(window) < CHECK_MIN_BATCHES:
                return
            verdict = _decide(window, self.n_jobs)
            if verdict.remember and verdict.kind == PROCESSES:
                self._set(PROCESSES, verdict.ns_per_task,
                          "correcting: threads measured again: " + verdict.reason, True,
                          corrected=True)
            return
        if not self.threads_ns:
            return
        self.checked.append((n_tasks, duration_ns, batch.finished_ns if batch else 0))
        if kind == PROCESSES:
            steady = steady_remote_throughput([(c[2], c[0]) for c in self.checked], self.n_jobs)
            if steady is None:
                return
            elapsed, tasks = steady
        else:
            elapsed = sum(c[1] for c in self.checked)
            tasks = sum(c[0] for c in self.checked)
        if elapsed < CHECK_MIN_NS or not tasks:
            return
        per_task = elapsed / tasks
        if per_task > CORRECTION_MARGIN * self.threads_ns:
            self._set(THREADS, self.threads_ns,
                      f"correcting: {kind} ran {per_task / 1e3:.1f} us per task against "
                      f"{self.threads_ns / 1e3:.1f} on threads", True, corrected=True)
        else:
            self.corrected = True  # proved itself: stop checking

    def _set(self, kind, ns_per_task, reason, remember, corrected=False):
        self.kind, self.reason = kind, reason
        self.corrected = corrected
        self.checked = []
        if remember and self.function is not None:
            memo.put(self.function, (kind, ns_per_task, self.threads_ns, corrected))
        self.backend._routed(kind, ns_per_task, reason)


class CyjobBackend(ParallelBackendBase):
    """joblib backend routing batches to cyjob's threads, processes or the
    caller's thread, as ``cyjob.Parallel``'s default backend does.

    Parameters
    ----------
    nesting_level : int, optional
        Set by joblib.
    inner_max_num_threads : int, optional
        BLAS/OpenMP threads in each worker process, and OpenMP threads
        started by each worker thread (default: CPUs / n_jobs).
    max_batch_size : int, optional
        Upper bound on automatic batches (default 10,000, as in ``cyjob.Parallel``).
    """

    supports_retrieve_callback = True
    # joblib.parallel_config(inner_max_num_threads=...) reaches the cap on
    # worker processes' BLAS/OpenMP and on worker threads' OpenMP.
    supports_inner_max_num_threads = True
    uses_threads = True
    supports_sharedmem = True
    supports_timeout = True

    @property
    def default_n_jobs(self):
        """joblib's n_jobs when neither the call nor joblib's config gives one:
        ``cyjob.parallel_config(n_jobs=...)``'s, else 1."""
        n_jobs = get_config()["n_jobs"]
        return 1 if n_jobs is None else n_jobs

    def __init__(self, nesting_level=None, inner_max_num_threads=None,
                 max_batch_size=None, **backend_kwargs):
        super().__init__(nesting_level=nesting_level,
                         inner_max_num_threads=inner_max_num_threads, **backend_kwargs)
        self.max_batch_size = max_batch_size
        self.parallel = None
        self._pool = None
        self._threads = None
        self._processes = None
        self._n_jobs = 1
        self._sizer = None
        self._route = None
        self._given = (None, "")
        self._hints = {}
        # Batches submitted and not finished: abort_everything cancels them.
        self._jobs = set()
        self._inline = deque()
        self._inline_running = False
        self._in_context = None
        self._inner_threads = None
        self._openmp = ()

    def effective_n_jobs(self, n_jobs):
        """Workers for ``n_jobs`` (joblib's meaning; 1 inside a cyjob worker)."""
        workers = n_workers(n_jobs)
        return 1 if in_worker_thread() else workers

    def configure(self, n_jobs=1, parallel=None, prefer=None, require=None,
                  max_nbytes=None, temp_folder=None, mmap_mode=None, **backend_kwargs):
        """Set up one joblib call; return its worker count."""
        # cyjob.parallel_config in this thread fills in what joblib's left open.
        config = get_config()
        prefer = prefer if prefer is not None else config["prefer"]
        require = require if require is not None else config["require"]
        if self.inner_max_num_threads is None:
            self.inner_max_num_threads = config["inner_max_num_threads"]
        # joblib.parallel_config sets it on the backend unchecked: a bad one
        # failed later with an internal TypeError ("x") or was silently
        # misread (0 as the default, -2 or 2.5 passed on to the workers).
        check_inner_max_num_threads(self.inner_max_num_threads)
        chosen = config["backend"]
        n_jobs = self.effective_n_jobs(n_jobs)
        if n_jobs == 1 or chosen == "sequential":
            # One worker (or nested in a worker): the caller's thread does it all.
            raise FallbackToBackend(SequentialBackend(nesting_level=self.nesting_level))
        self.parallel = parallel
        self._n_jobs = n_jobs
        self._threads = get_pool(n_jobs)
        self._pool = self._threads.pool
        self._hints = {"max_nbytes": max_nbytes, "temp_folder": temp_folder,
                       "mmap_mode": mmap_mode}
        if require == "sharedmem":
            self._given = (THREADS, 'require="sharedmem"')
        elif chosen == "threading":
            self._given = (THREADS, 'cyjob.parallel_config(backend="threading")')
        elif chosen in ("processes", "loky", "multiprocessing"):
            self._given = (PROCESSES, f'cyjob.parallel_config(backend="{chosen}")')
        elif prefer == "threads":
            self._given = (THREADS, 'prefer="threads"')
        elif prefer == "processes":
            self._given = (PROCESSES, 'prefer="processes"')
        else:
            self._given = (None, "")
        self._new_call()
        return n_jobs

    def _new_call(self):
        n_jobs = self._n_jobs
        # joblib never says how many tasks are left, so the sizer cannot cut
        # the last batches smaller: batches of at most ~50 ms (not cyjob's
        # 0.5 s) bound the time a worker idles at the end of a call (a hand-off
        # costs ~15-50 us, a process round trip ~0.2 ms: still under 1%).
        self._sizer = BatchSizer(n_jobs, 0, self.max_batch_size or DEFAULT_MAX_BATCH_SIZE,
                                 JOBLIB_BATCH_SECONDS)
        self._route = _Route(self, n_jobs, *self._given)
        # What batches sent to processes take along, read now, in the thread
        # that makes the call (later batches are dispatched from callbacks).
        from cyjob.backends.processes.context import capture

        inner = self.inner_max_num_threads or max(_cpus() // n_jobs, 1)
        self._inner_threads = inner
        self._in_context = capture(inner)
        # Batches on threads cap the OpenMP regions they start, per thread
        # (_threadcaps): n workers x n OpenMP threads would oversubscribe
        # (HistGradientBoosting: 2-3x slower on a loaded machine).
        self._openmp = openmp_runtimes() if inner < _cpus() else ()

    def compute_batch_size(self):
        """Tasks per batch for ``batch_size="auto"``, from measured run times."""
        sizer = self._sizer
        if sizer is None:
            return 1
        return sizer.next_size(-1)

    def batch_completed(self, batch_size, duration):
        # joblib's figure includes the time a batch waited in the queue; the
        # sizer gets the run time from the worker (submit's callback).
        pass

    # -- routing ------------------------------------------------------------

    def submit(self, func, callback=None):
        """Run joblib's batch callable where the call is routed; return its
        future-like object."""
        route = self._route
        n_tasks = len(func) if hasattr(func, "__len__") else 1
        if route is None:  # joblib never configured us: plain threads
            return self._submit_job(func, callback, n_tasks)
        if route.function is None and not route.fixed:
            route.begin(func)
            if route.kind is not None:
                self._routed(route.kind, route.ns_per_task, route.reason)
        elif route.function is None:
            route.function = _function_of(func)
        kind = route.kind
        if kind == PROCESSES:
            executor = self._process_executor()
            # A cold pool boots in 0.1-0.3 s: threads run the batches of a
            # measured call meanwhile (a hint or a marker asked for processes).
            if executor is not None and (route.fixed or executor.ready()):
                job = self._submit_to(executor, self._in_context(func), callback, n_tasks,
                                      False)
                self._fit_batches_to(executor.batch_cost_ns)
                return job
        elif kind == INLINE and self._may_run_inline():
            return self._run_inline(func, callback, n_tasks)
        if self._openmp:
            func = capped(func, self._inner_threads, self._openmp)
        if route.measuring:
            return self._submit_to(self._threads, func, callback, n_tasks, True)
        return self._submit_job(func, callback, n_tasks)

    def _submit_to(self, executor, func, callback, n_tasks, measure):
        """As a one-task cyjob call: measured by the core on threads, or run
        by the process pool (which reports to a call)."""
        job = _JobCall(self, executor, func, callback, n_tasks, measure)
        self._jobs.add(job)
        job.start()
        return job

    def _submit_job(self, func, callback, n_tasks):
        """Straight to the thread pool (``ThreadPool.submit_job``): the
        worker that runs the batch stores the outcome in the ``Job``, then
        runs joblib's completion callback."""
        job = Job(func, partial(self._finished, callback, n_tasks))
        self._jobs.add(job)
        return self._pool.submit_job(job)

    def _finished(self, callback, n_tasks, job):
        """In the worker that ran ``job``."""
        self._jobs.discard(job)
        sizer = self._sizer
        if job.error is None and sizer is not None:
            sizer.observe(n_tasks, job.duration_ns)
        if callback is not None:
            callback(job)

    def _process_executor(self):
        if self._processes is None:
            try:
                self._processes = _CallProcesses(self._n_jobs, **self._hints)
            except Exception:
                return None
        return self._processes

    def _may_run_inline(self):
        parallel = self.parallel
        return (parallel is not None and not getattr(parallel, "return_generator", True)
                and getattr(parallel, "timeout", None) is None)

    def _run_inline(self, func, callback, n_tasks):
        """Run in the caller's thread.  joblib's callback dispatches the next
        batch from inside this one: queue it and run it when this one has
        returned (a loop, not a recursion as deep as the number of batches)."""
        job = _InlineJob(self, func, callback, n_tasks)
        self._inline.append(job)
        if self._inline_running:
            return job
        self._inline_running = True
        try:
            while self._inline:
                self._inline.popleft().run()
        finally:
            self._inline_running = False
        return job

    def _fit_batches_to(self, cost_ns):
        """Process batches long enough for what sending one costs
        (``PAYLOAD_COST_FACTOR``): fewer, larger batches when every batch
        carries a large object."""
        sizer = self._sizer
        if sizer is None or not cost_ns:
            return
        want_ns = min(PAYLOAD_COST_FACTOR * cost_ns, PAYLOAD_MAX_BATCH_SECONDS * 1e9)
        if want_ns <= 1.25 * sizer.min_batch_ns:
            return
        resized = BatchSizer(self._n_jobs, 0, sizer.max_size,
                             max(want_ns, sizer.target_ns) / 1e9, want_ns / 1e9)
        resized.expect(sizer.ns_per_task)
        self._sizer = resized

    def _routed(self, kind, ns_per_task, reason):
        """A choice (or a correction) was made: size the coming batches for it."""
        if kind == PROCESSES and self._sizer is not None:
            self._sizer = self._sizer.continued(_CallProcesses.min_batch_seconds)
            self._sizer.expect(ns_per_task)
        parallel = self.parallel
        verbose = getattr(parallel, "verbose", 0) if parallel is not None else 0
        if verbose >= 10 and reason:
            parallel._print(f"cyjob: using {kind}: {reason}")

    # -- joblib's hooks -------------------------------------------------------

    def retrieve_result_callback(self, out):
        """The batch's result list, or raise the error of its failed task."""
        if type(out) is Job:
            error = out.error
            out.error = None
        else:
            error = out.exception
            out.exception = None
        if error is not None:
            raise chain_remote_traceback(error, traceback_text(error))
        result, out.result = out.result, None
        return result

    @contextlib.contextmanager
    def retrieval_context(self):
        """Raise an error joblib already recorded before its retrieval loop.

        joblib 1.6 raises a failed batch, or an error of the input iterator
        (which it records as a failed batch of no tasks), only from inside
        its retrieval loop, and with ``pre_dispatch="all"`` it skips that
        loop when every dispatched task is done: the call then returned an
        empty list, the error lost.  Batches run inline are all done by then.
        """
        parallel = self.parallel
        if parallel is not None and getattr(parallel, "_aborting", False):
            raise_recorded_error = getattr(parallel, "_raise_error_fast", None)
            if raise_recorded_error is not None:
                raise_recorded_error()
        yield

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
        if self._route is None and self._pool is not None:
            self._new_call()  # a managed backend's next call: routed afresh

    def stop_call(self):
        """The joblib call ended: its memory-mapped files go."""
        self._end_call()

    def abort_everything(self, ensure_ready=True):
        """Skip every batch still queued (running ones finish; a worker
        process running one is stopped)."""
        jobs, self._jobs = list(self._jobs), set()
        self._inline.clear()
        for job in jobs:
            # A batch still running finishes later: its callback must not
            # land in the next call of a Parallel that reuses this backend.
            job.callback = None
            if type(job) is Job:
                job.cancel()
            else:
                job.abort()

    def terminate(self):
        # The pools are shared with cyjob.Parallel and stay warm for the next call.
        self._end_call()
        self._sizer = None

    def _end_call(self):
        processes, self._processes = self._processes, None
        if processes is not None:
            processes.close()
        self._route = None

    def get_nested_backend(self):
        """Nested calls run sequentially in the worker that makes them."""
        nesting_level = (self.nesting_level or 0) + 1
        return SequentialBackend(nesting_level=nesting_level), None

    def __reduce__(self):
        return (CyjobBackend, ())


def _call_processes_class():
    from cyjob.backends.processes import ProcessExecutor
    from cyjob.backends.processes import sharedmem

    class CallProcesses(ProcessExecutor):
        """The process executor of one joblib call: every batch of the call
        shares one ``CallMemory``, so a large array carried by many batches
        is dumped to a memory-mapped file once (joblib's loky dumps it for
        every batch: joblib#1733); the file goes when the joblib call ends."""

        def __init__(self, n_jobs, max_nbytes=None, temp_folder=None, mmap_mode=None):
            if max_nbytes is None:
                max_nbytes = 1 << 20
            super().__init__(n_jobs, max_nbytes, temp_folder,
                             "r" if mmap_mode is None else mmap_mode)
            self.memory = sharedmem.CallMemory(self.max_nbytes, self.temp_folder,
                                               self.mmap_mode)
            # CPU time of pickling and sending a batch here: the least of the
            # last four (the first dumps the call's large arrays, once), 0
            # until two were sent.
            self.batch_cost_ns = 0.0
            self._costs = []

        def submit(self, batch):
            self._calls[id(batch.call)] = self.memory
            started = time.thread_time_ns()  # CPU time: a loaded machine does not inflate it
            try:
                super().submit(batch)
            finally:
                self._calls.pop(id(batch.call), None)
            costs = self._costs
            costs.append(time.thread_time_ns() - started)
            if len(costs) > 4:
                del costs[0]
            if len(costs) >= 2:
                self.batch_cost_ns = min(costs)

        def call_finished(self, call):
            # One batch of the joblib call: the files stay for the others.
            self.pool.call_finished(call)

        def close(self):
            self.memory.cleanup()

    return CallProcesses


class _LazyProcesses:
    """``_CallProcesses``: the processes backend is imported on first use."""

    min_batch_seconds = PROCESS_MIN_BATCH_SECONDS
    _cls = None

    def __call__(self, *args, **kwargs):
        if _LazyProcesses._cls is None:
            _LazyProcesses._cls = _call_processes_class()
        return _LazyProcesses._cls(*args, **kwargs)


_CallProcesses = _LazyProcesses()


def register(name="cyjob", make_default=False):
    """Register :class:`CyjobBackend` with joblib under ``name``."""
    if not isinstance(name, str) or not name:
        raise TypeError(f"name must be a non-empty string, got {name!r}")
    register_parallel_backend(name, CyjobBackend, make_default=make_default)
    return CyjobBackend
