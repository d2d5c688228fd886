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
later calls skip the probe (and re-probe if a task's cost moves 10x).  An
explicit backend, ``prefer``, ``require="sharedmem"`` or a marker on the
function (``cyjob.nogil(f)``, ``cyjob.gil_bound(f)``) wins over measurement.
"""

import sys
import threading
import weakref

from cyjob._batching import BatchSizer
from cyjob._core import Executor
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


class _Memo:
    """Choices per function: weakly keyed where possible, so a closure's
    memory is not kept alive by cyjob."""

    def __init__(self, max_strong=1024):
        self.weak = weakref.WeakKeyDictionary()
        self.strong = {}
        self.max_strong = max_strong
        self.lock = threading.Lock()

    def get(self, function):
        try:
            return self.weak.get(function) or self.strong.get(function)
        except TypeError:  # unhashable callable
            return None

    def put(self, function, choice):
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

    def clear(self):
        with self.lock:
            self.weak.clear()
            self.strong.clear()


memo = _Memo()
_THREADS = ThreadingBackend()
_INLINE = SequentialBackend().executor(1)


class AutoExecutor(Executor):
    """Routes each batch of one call to threads (probing), then to the chosen
    executor.  Made per call: it holds that call's measurements."""

    def __init__(self, n_workers, parallel, threads):
        super().__init__(n_workers)
        self.parallel = parallel
        self.threads = threads
        # The caller helps only with thread batches; batches sent to a
        # process are marked claimed so it never runs them too.
        self.caller_may_help = threads.caller_may_help
        self.call = None
        self.target = None          # executor chosen, None while probing
        self.choice = None          # (kind, ns_per_task, reason)
        self.function = None
        self.probe = []             # batches run on threads while probing
        self.remembered = None      # (kind, ns_per_task) from an earlier call
        self.checking = None        # batches that verify a remembered choice
        self.out_of_process = False

    # -- routing ----------------------------------------------------------

    def submit(self, batch):
        if self.function is None:
            self.call = batch.call
            self.call.measure_cpu = True  # until a choice is made
            self.function = batch.tasks[0]
            kind = _marker_of(self.function)
            if kind is not None:
                self._choose(kind, 0.0, "marked with cyjob." +
                             ("nogil" if kind == THREADS else "gil_bound"), remember=False)
            else:
                self.remembered = memo.get(self.function)
                if self.remembered is not None:
                    self.checking = []
                    self._choose(self.remembered[0], self.remembered[1],
                                 "remembered from an earlier call", remember=False)
        elif self.target is None:
            self._maybe_decide()
        elif self.checking is not None:
            self._check_memo()
        target = self.target if self.target is not None else self.threads
        if self.target is None:
            self.probe.append(batch)
        elif self.checking is not None:
            self.checking.append(batch)
        if self.out_of_process and target is self.target:
            if batch.claimed:
                return  # a thread ran it while the choice was being made
            batch.claimed = True  # the caller must not run it too
        target.submit(batch)

    def call_finished(self, call):
        for executor in (self.threads, self.target):
            if executor is not None:
                executor.call_finished(call)

    # -- measuring --------------------------------------------------------

    def _maybe_decide(self):
        done = [b for b in self.probe if b.done and b.results is not None]
        if len(done) < min(self.n_workers, len(self.probe)):
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
            self._choose(THREADS, per_task, "tasks release the GIL: " + figures)
        elif per_task < TINY_TASK_NS:
            if len(done) >= self.n_workers:
                self._choose(INLINE, per_task, "tasks too small to gain from workers: " + figures)
        elif wall < PROBE_MIN_WORK_NS:
            return  # not enough seen yet
        elif busy < WAITING_BUSY:
            self._choose(THREADS, per_task, "tasks mostly wait (I/O, sleep): " + figures)
        elif per_task * busy >= PROCESS_MIN_TASK_NS:
            self._choose(PROCESSES, per_task, "tasks hold the GIL: " + figures)
        else:
            self._choose(INLINE, per_task, "tasks hold the GIL and are small: " + figures)

    def _check_memo(self):
        done = [b for b in self.checking if b.done and b.results is not None]
        n_tasks = sum(b.size for b in done)
        if n_tasks < MEMO_CHECK_TASKS:
            return
        self.checking = None
        per_task = sum(b.duration_ns for b in done) / n_tasks
        expected = self.remembered[1]
        if expected > 0 and not (1 / MEMO_DRIFT <= per_task / expected <= MEMO_DRIFT):
            self._say(f"task cost moved from {expected / 1e3:.1f} to {per_task / 1e3:.1f} us: "
                      "measuring again")
            self.target, self.choice, self.probe = None, None, []
            self.out_of_process = False
            self.call.measure_cpu = True
    # -- choosing ---------------------------------------------------------

    def _choose(self, kind, ns_per_task, reason, remember=True):
        self.out_of_process = False
        if kind == PROCESSES:
            target = _process_executor(self.n_workers, self.parallel)
            if target is None:
                kind, reason = THREADS, reason + " (no process backend: staying on threads)"
                target = self.threads
            else:
                self.out_of_process = True
                # Batches long enough to amortise a process round trip.
                sizer = self.call.sizer
                self.call.use_sizer(BatchSizer(
                    sizer.n_workers, sizer.fixed_size, sizer.max_size, sizer.target_ns / 1e9,
                    target.min_batch_seconds))
        elif kind == INLINE:
            target = _INLINE
            if self.parallel is not None and self.parallel.return_as == "list" \
                    and not self.parallel._fixed_batch_size:
                # Balance means nothing in one thread: batches as large as allowed.
                self.call.use_sizer(BatchSizer(1, self.parallel._max_batch_size,
                                               self.parallel._max_batch_size))
        else:
            target = self.threads
        self.target, self.choice = target, (kind, ns_per_task, reason)
        self.call.measure_cpu = False
        if remember and self.function is not None:
            memo.put(self.function, (kind, ns_per_task))
        self._say(f"Using {kind}: {reason}")

    def _say(self, message):
        verbose = getattr(self.parallel, "verbose", 0) if self.parallel is not None else 0
        if verbose >= 10:
            stream = sys.stderr if verbose < 50 else sys.stdout  # joblib's rule
            stream.write(f"[{self.parallel!r}]: {message}\n")


def _process_executor(n_workers, parallel):
    from cyjob.backends import get_backend

    try:
        backend = get_backend("processes")
    except (NotImplementedError, ValueError):
        return None
    return backend.executor(n_workers, parallel)


class AutoBackend(Backend):
    """Threads, processes or the caller's thread, chosen by measurement."""

    name = "auto"
    supports_sharedmem = False
    in_process = True

    def executor(self, n_workers, parallel=None):
        return AutoExecutor(n_workers, parallel, _THREADS.executor(n_workers, parallel))
