"""The default backend: measure the first batches, then pick where the rest run.

With no backend given, a call starts on the thread pool and watches its first
batches (the core records, for each batch run in this process, its start and
end and the CPU time of the thread that ran it):

* ``efficiency`` = CPU time of all probe batches / wall time they spanned.
  Above ~1.3 several threads computed at once: the function releases the GIL
  (numpy on large arrays, Cython nogil, numba nogil)  -> stay on threads.
* ``busy`` = CPU time / time the batches were running.  Low: tasks mostly wait
  (sleep, I/O), which threads overlap well                   -> stay on threads.
* Otherwise the tasks hold the GIL.  If a task costs enough for pickling to be
  cheap next to it                                           -> processes;
  if it is tiny, no backend beats a plain loop               -> the caller's
  thread (inline).

The choice is sticky for the rest of the call and remembered per function, so
later calls skip the probe (and re-probe if a task's cost moves 10x, or after
a minute).  An explicit backend, ``prefer``, ``require="sharedmem"`` or a
marker on the function (``cyjob.nogil(f)``, ``cyjob.gil_bound(f)``) wins over
measurement.
"""

import functools
import pickle
import threading
import time
import types
import weakref

from cyjob._batching import BatchSizer
from cyjob._dispatch import Executor, Router
from cyjob._progress import verbose_stream
from cyjob.backends import get_backend
from cyjob.backends.base import Backend
from cyjob.backends.sequential import SequentialBackend
from cyjob.backends.threads import ThreadingBackend

# Probe until the batches measured hold this much work.  A task that releases
# the GIL lets a second thread start at once, so two batches overlap within
# this much; GIL-bound ones cannot (the second thread waits up to a switch
# interval for the GIL).
PROBE_MIN_WORK_NS = 2_000_000
# Parallel efficiency (CPU seconds per wall second) that proves GIL release.
PARALLEL_EFFICIENCY = 1.3
# CPU per wall second of a running batch under which tasks mostly wait.
WAITING_BUSY = 0.3
# A GIL-bound task this long (CPU) is worth sending to a process: pickling a
# batch costs ~0.15-10 us per task (PERFORMANCE.md), a round trip ~100 us.
PROCESS_MIN_TASK_NS = 50_000
# Below this per-task time, even a GIL-releasing task gains nothing from threads.
TINY_TASK_NS = 20_000
# A remembered choice is re-measured when a task's cost moves this much...
MEMO_DRIFT = 10.0
# ...over this many tasks (one task right after other work runs on cold
# caches, 10x slower than the next: benchmarks/bench_auto.py).
MEMO_CHECK_TASKS = 8
# ...and in any case after this many seconds: a choice made while other
# programs held the CPUs (a GIL-free task that finds no second CPU looks
# GIL-bound) must not stick for the life of the process.
MEMO_MAX_AGE = 60.0

THREADS, PROCESSES, INLINE = "threading", "processes", "inline"

_MARKER = "__cyjob_backend__"


def nogil(function):
    """Mark ``function`` as releasing the GIL: the default backend runs it
    on threads without measuring."""
    return _mark(function, THREADS)


def gil_bound(function):
    """Mark ``function`` as holding the GIL: the default backend runs it in
    worker processes without measuring."""
    return _mark(function, PROCESSES)


class _Marked:
    """Carries a marker for callables that take no attributes (builtins)."""

    def __init__(self, function, kind):
        self.function = function
        setattr(self, _MARKER, kind)

    def __call__(self, *args, **kwargs):
        return self.function(*args, **kwargs)

    def __reduce__(self):
        return (_Marked, (self.function, getattr(self, _MARKER)))


def _marker_of(function):
    # Through __dict__: a failed getattr costs an exception (~1 us a call).
    attrs = getattr(function, "__dict__", None)
    if attrs is not None:
        return attrs.get(_MARKER)
    return getattr(function, _MARKER, None)


def _mark(function, kind):
    if not callable(function):
        raise TypeError(f"expected a callable, got {type(function).__name__}")
    try:
        setattr(function, _MARKER, kind)
        return function
    except (AttributeError, TypeError):
        return _Marked(function, kind)


def _memo_key(function):
    # A bound method or a partial is made afresh at each call site
    # (delayed(self.fit)): remember what it calls, which lives on.
    while True:
        kind = type(function)
        if kind is types.MethodType:
            function = function.__func__
        elif kind is functools.partial:
            function = function.func
        else:
            return function


class _Memo:
    """Choices per function, ``(kind, ns_per_task)``, each kept for
    MEMO_MAX_AGE seconds: weakly keyed where possible, so a closure's memory
    is not kept alive by cyjob."""

    def __init__(self, max_strong=1024):
        self.weak = weakref.WeakKeyDictionary()
        self.strong = {}
        self.max_strong = max_strong
        self.lock = threading.Lock()

    def get(self, function):
        function = _memo_key(function)
        try:
            entry = self.weak.get(function) or self.strong.get(function)
        except TypeError:  # unhashable callable
            return None
        if entry is None or entry[2] < time.monotonic():
            return None
        return entry[:2]

    def put(self, function, choice):
        function = _memo_key(function)
        choice = (*choice, time.monotonic() + MEMO_MAX_AGE)
        with self.lock:
            try:
                self.weak[function] = choice
            except TypeError:
                try:
                    if len(self.strong) >= self.max_strong:
                        self.strong.clear()
                    self.strong[function] = choice
                except TypeError:
                    pass

    def forget(self, function):
        function = _memo_key(function)
        with self.lock:
            for table in (self.weak, self.strong):
                try:
                    table.pop(function, None)
                except TypeError:
                    pass

    def clear(self):
        with self.lock:
            self.weak.clear()
            self.strong.clear()


memo = _Memo()
_THREADS = ThreadingBackend()
_INLINE = SequentialBackend().executor(1)


class AutoExecutor(Router):
    """The policy of one call: what to measure, what to choose, and whether a
    remembered choice still holds.  The core's ``Router`` only sends each
    batch where this policy says; it calls these hooks before the first
    batch (``begin``), before routing each batch while probing (``watch``),
    and after routing each batch while a remembered choice is being checked
    (``routed``)."""

    __slots__ = ("plan", "initial_sizer", "choice", "function", "seen", "remembered", "check")

    # -- hooks called by the core -------------------------------------------

    def begin(self, function):
        self.initial_sizer = self.call.sizer
        self.function = function
        self.remembered = None
        self.check = None
        kind = _marker_of(function)
        if kind is not None:
            self._choose(kind, 0.0, "marked with cyjob." +
                         ("nogil" if kind == THREADS else "gil_bound"))
            return
        self.remembered = remembered = memo.get(function)
        if remembered is None:
            self._probe()
        else:
            self._choose(remembered[0], remembered[1], "remembered from an earlier call")

    def watch(self, batch):
        self._maybe_decide()
        if self.watch_before:
            self.seen.append(batch)

    def routed(self, batch):
        self._check_remembered()

    def call_finished(self, call):
        super().call_finished(call)
        self.seen = None  # batches, which hold the call, which holds this
        self.check = None

    # -- measuring --------------------------------------------------------

    def _maybe_decide(self):
        probe = self.seen
        done = [b for b in probe if b.done and b.results is not None]
        if len(done) < min(self.n_workers, len(probe)):
            return
        n_tasks = sum(b.size for b in done)
        wall = sum(b.finished_ns - b.started_ns for b in done)
        cpu = sum(b.cpu_ns for b in done)
        if not n_tasks or wall <= 0:
            return
        span = max(b.finished_ns for b in done) - min(b.started_ns for b in done)
        per_task = wall / n_tasks
        efficiency = cpu / span if span > 0 else 0.0
        overlap = wall / span if span > 0 else 1.0
        busy = cpu / wall
        figures = (f"{per_task / 1e3:.1f} us per task, parallel efficiency "
                   f"{efficiency:.2f} on {overlap:.2f} overlapping threads, busy {busy:.2f}")
        if efficiency >= PARALLEL_EFFICIENCY and per_task >= TINY_TASK_NS:
            self._choose(THREADS, per_task, "tasks release the GIL: " + figures, measured=True)
        elif per_task < TINY_TASK_NS:
            if len(done) >= self.n_workers:
                self._choose(INLINE, per_task, "tasks too small to gain from workers: " + figures,
                             measured=True)
        elif wall < PROBE_MIN_WORK_NS:
            return  # not enough seen yet
        elif busy < WAITING_BUSY:
            self._choose(THREADS, per_task, "tasks mostly wait (I/O, sleep): " + figures, measured=True)
        elif per_task * busy >= PROCESS_MIN_TASK_NS:
            self._choose(PROCESSES, per_task, "tasks hold the GIL: " + figures, measured=True)
        else:
            self._choose(INLINE, per_task, "tasks hold the GIL and are small: " + figures, measured=True)

    # -- checking a remembered choice ---------------------------------------

    def _check_later(self, n_tasks, ns_per_task, lowest, highest, then):
        """Check the choice on the next ``n_tasks`` tasks the call's current
        sizer observes: if each costs between ``lowest`` and ``highest``
        times ``ns_per_task``, size the rest of the call with ``then`` (if
        given); otherwise measure again."""
        sizer = self.call.sizer
        self.check = (sizer, sizer.n_tasks, sizer.work_ns, n_tasks, ns_per_task,
                      lowest, highest, then)
        self.watch_batches(after=True)

    def _check_remembered(self):
        sizer, from_tasks, from_ns, n_tasks, expected, lowest, highest, then = self.check
        n = sizer.n_tasks - from_tasks
        if n < n_tasks:
            return
        self.check = None
        self.watch_batches()
        per_task = (sizer.work_ns - from_ns) / n
        ratio = per_task / expected if expected > 0 else 1.0
        if not (lowest <= ratio <= highest):
            self._drifted(per_task)
        elif then is not None:
            self.call.use_sizer(then)

    def _drifted(self, per_task):
        self._say(f"task cost moved from {self.remembered[1] / 1e3:.1f} to "
                  f"{per_task / 1e3:.1f} us: measuring again")
        memo.forget(self.function)  # a call that ends before choosing must not reuse it
        self.route_to(None)
        self.choice = None
        self.call.use_sizer(self.initial_sizer)
        self._probe()

    # -- choosing ---------------------------------------------------------

    def _probe(self):
        # Measure the first batches on threads until _maybe_decide chooses.
        self.seen = []
        self.watch_batches(before=True)
        self.call.measure_cpu = True

    def _choose(self, kind, ns_per_task, reason, measured=False):
        call = self.call
        plan = self.plan
        self.watch_batches()
        call.measure_cpu = False
        verifying = not measured and self.remembered is not None
        then = None  # sizer once a remembered choice is verified
        elsewhere = False
        if kind == PROCESSES:
            target = _process_executor(self.n_workers, plan)
            if target is not None:
                target = _PicklableOrThreads(self, target)
            if target is None:
                kind, reason = THREADS, reason + " (no process backend: staying on threads)"
                target = self.first
            else:
                elsewhere = True
                # Batches long enough to amortise a process round trip, sized
                # from what the threads (or an earlier call) measured.
                sizer = call.sizer.continued(target.min_batch_seconds)
                sizer.expect(ns_per_task)
                call.use_sizer(sizer)
        elif kind == INLINE:
            target = _INLINE
            largest = plan.one_thread_batch_size() if plan is not None else 0
            if largest:
                # Once a remembered choice is verified.
                then = BatchSizer(1, largest, largest)
                call.use_sizer(BatchSizer(1, MEMO_CHECK_TASKS, largest) if verifying else then)
        else:
            target = self.first
            call.sizer.expect(ns_per_task)
        self.route_to(target, elsewhere)
        self.choice = (kind, ns_per_task, reason)
        if measured:
            memo.put(self.function, (kind, ns_per_task))
        elif verifying:
            # Inline is already the cheapest place for tasks that got cheaper:
            # only heavier ones make it worth measuring again.
            lowest = 0.0 if kind == INLINE else 1 / MEMO_DRIFT
            self._check_later(MEMO_CHECK_TASKS, ns_per_task, lowest, MEMO_DRIFT, then)
        self._say(f"Using {kind}: {reason}")

    def _say(self, message):
        plan = self.plan
        if plan is not None and plan.verbose >= 10:
            verbose_stream(plan.verbose).write(f"[{plan.label}]: {message}\n")


class _PicklableOrThreads(Executor):
    """The process target of a call, unless a batch cannot be pickled: then
    that batch and the rest of the call stay on the threads (which run
    anything), rather than failing a call that threads would run."""

    def __init__(self, router, processes):
        super().__init__(processes.n_workers)
        self.router = router
        self.processes = processes
        self.min_batch_seconds = processes.min_batch_seconds

    def submit(self, batch):
        router = self.router
        if router.out_of_process:
            try:
                self.processes.submit(batch)
                return
            except pickle.PicklingError as exc:
                router.route_to(self, False)  # the router no longer claims batches
                router.choice = (THREADS, 0.0, "tasks cannot be pickled")
                router._say(f"Using {THREADS}: tasks cannot be pickled for worker "
                            f"processes ({exc})")
            batch.claimed = False  # claimed by the router for the processes
        router.first.submit(batch)

    def call_finished(self, call):
        self.processes.call_finished(call)  # its temp files, if any


def _process_executor(n_workers, plan):
    try:
        backend = get_backend("processes")
    except (NotImplementedError, ValueError):
        return None
    from cyjob.backends.processes import ProcessExecutor

    executor = backend.executor(n_workers, plan)
    # Not a pool of processes (at interpreter exit, say): stay on threads.
    return executor if isinstance(executor, ProcessExecutor) else None


class AutoBackend(Backend):
    """Threads, processes or the caller's thread, chosen by measurement."""

    name = "auto"
    supports_sharedmem = False

    def executor(self, n_workers, plan=None):
        executor = AutoExecutor(n_workers, _THREADS.executor(n_workers, plan))
        executor.plan = plan
        return executor
