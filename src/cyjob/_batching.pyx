"""The auto batch-size rule: a pure function of what has been measured.

No clock lives here.  Whoever runs a batch reports ``observe(size, duration)``
and the dispatcher asks ``next_size(remaining)``; tests drive the same object
with synthetic durations (tests/batching_model.py holds a Python twin).

The rule, for ``n_workers`` workers:

* Start with batches of one task, so the first results come back fast and every
  worker gets work while nothing is known about the cost of a task.
* Then aim for batches of ``target`` seconds (half a second by default), using
  a smoothed per-task cost, but
  - grow at most ``GROWTH``-fold from one batch to the next (a cheap first task
    must not produce one huge batch),
  - never plan a batch longer than ``1 / TAIL_SHARE`` of the work measured so
    far per worker (or ``MIN_BATCH`` if that is longer): a run's last batch
    then costs a bounded fraction of the whole run, even when the input's
    length is unknown,
  - never exceed ``max_size`` tasks, so progress stays visible and results keep
    streaming.
* When the number of tasks left is known (a sequence, or a lazy input whose end
  has been pulled into the look-ahead buffer), cap the batch at
  ``remaining / (BALANCE * n_workers)``: guided self-scheduling, so batches
  shrink towards the end and the workers finish together -- unless all that
  is left is shorter than ``MIN_SPLIT_NS``: such a rest goes to one worker.
"""

from libc.math cimport ceil

# Tuned with benchmarks/bench_batching.py (heavy tail, fast-then-slow).
cdef double GROWTH = 2.0
cdef double TAIL_SHARE = 8.0
cdef double BALANCE = 2.0
# Batches shorter than this are always allowed: the imbalance they can cause
# is negligible, and a batch costs ~5-10 us of dispatch (200k tiny tasks).
cdef double MIN_BATCH_NS = 2e6
# Work left that is shorter than this is not split between workers: a second
# worker's wake-up (~12-15 us) and the GIL passing between two threads cost
# more than they could save (10 tiny GIL-bound tasks: ~9 us per call in one
# batch, ~115 us split in two on two threads).
cdef double MIN_SPLIT_NS = 50e3
# Weight of the newest batch in the smoothed per-task cost: one outlier batch
# moves the estimate by a third of its excess, two in a row by more than half.
cdef double SMOOTHING = 0.35

DEFAULT_MAX_BATCH_SIZE = 10_000
DEFAULT_TARGET_SECONDS = 0.5
DEFAULT_MIN_BATCH_SECONDS = MIN_BATCH_NS / 1e9
# The shortest batch sent to a worker process.  A batch's round trip (pickle,
# socket, wake-up, results) costs ~0.2 ms: batches of at least 10 ms keep it
# near 2% (benchmarks/bench_processes.py, 240 x 2 ms tasks: 1.55x -> 1.32x of
# the bound with 4-task batches).  Here, so that the default backend's cold
# start and the joblib bridge size process batches before the process
# backend is imported.
PROCESS_MIN_BATCH_SECONDS = 0.010


cdef class BatchSizer:
    """Decides how many tasks go into the next batch.

    Parameters
    ----------
    n_workers : int
        Workers that run batches at the same time.
    fixed_size : int, default=0
        A positive value forces that batch size (``batch_size=<int>``).
    max_size : int, default=10_000
        Upper bound on an automatic batch.
    target_seconds : float, default=0.5
        Wanted duration of one batch once the cost of a task is known.
    min_batch_seconds : float, default=0.002
        Batches this short are always allowed; an executor whose round trip
        per batch costs more (processes, dask) asks for longer ones.
    """

    def __init__(self, Py_ssize_t n_workers, Py_ssize_t fixed_size=0,
                 Py_ssize_t max_size=DEFAULT_MAX_BATCH_SIZE,
                 double target_seconds=DEFAULT_TARGET_SECONDS,
                 double min_batch_seconds=DEFAULT_MIN_BATCH_SECONDS):
        if n_workers < 1:
            raise ValueError(f"n_workers must be >= 1, got {n_workers}")
        if fixed_size < 0:
            raise ValueError(f"fixed_size must be >= 0, got {fixed_size}")
        if max_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_size}")
        if not target_seconds > 0:
            raise ValueError(f"target_seconds must be > 0, got {target_seconds}")
        self.n_workers = n_workers
        self.fixed_size = fixed_size
        self.max_size = max_size
        self.target_ns = target_seconds * 1e9
        self.min_batch_ns = min(min_batch_seconds * 1e9, self.target_ns)
        self.ns_per_task = 0.0
        self.work_ns = 0.0
        self.n_observed = 0
        self.n_tasks = 0
        self.last_size = 0

    def continued(self, double min_batch_seconds):
        """A sizer for the rest of a call moved to an executor whose batches
        must last at least ``min_batch_seconds``: it keeps what was measured,
        so the new executor's first batches are already sized for it."""
        cdef BatchSizer sizer = BatchSizer(self.n_workers, self.fixed_size, self.max_size,
                                           self.target_ns / 1e9, min_batch_seconds)
        sizer.ns_per_task = self.ns_per_task
        sizer.work_ns = self.work_ns
        sizer.n_observed = self.n_observed
        sizer.n_tasks = self.n_tasks
        return sizer

    cpdef void expect(self, double ns_per_task):
        """Start from a known cost per task (measured by an earlier call)
        instead of batches of one; measurements take over as they come."""
        if self.n_observed == 0 and ns_per_task > 0:
            self.ns_per_task = ns_per_task
            self.n_observed = 1

    cpdef Py_ssize_t small_call_size(self, double ns_per_task):
        """The most tasks of ``ns_per_task`` each that take less than
        ``MIN_SPLIT_NS`` in all (0 if the cost is unknown): a call of that
        many goes, once ``expect(ns_per_task)`` is given, to one worker in one
        batch."""
        if not ns_per_task > 0:
            return 0
        return <Py_ssize_t>(MIN_SPLIT_NS / ns_per_task)

    cpdef void observe(self, Py_ssize_t size, double duration_ns):
        """Record that a batch of ``size`` tasks took ``duration_ns``."""
        cdef double per_task
        if size <= 0:
            return
        if duration_ns < 1.0:
            duration_ns = 1.0
        per_task = duration_ns / size
        if self.n_observed == 0:
            self.ns_per_task = per_task
        else:
            self.ns_per_task += SMOOTHING * (per_task - self.ns_per_task)
        self.work_ns += duration_ns
        self.n_observed += 1
        self.n_tasks += size

    cpdef Py_ssize_t next_size(self, Py_ssize_t remaining):
        """Size of the next batch; ``remaining`` is -1 when unknown."""
        cdef double size, budget
        if remaining == 0:
            return 0
        if self.fixed_size > 0:
            size = self.fixed_size
        elif self.n_observed == 0:
            size = 1
        else:
            budget = self.work_ns / (TAIL_SHARE * self.n_workers)
            if budget < self.min_batch_ns:
                budget = self.min_batch_ns
            if budget > self.target_ns:
                budget = self.target_ns
            size = budget / self.ns_per_task
            if self.last_size > 0 and size > GROWTH * self.last_size:
                size = GROWTH * self.last_size
            if size > self.max_size:
                size = self.max_size
            if (remaining > 0 and remaining * self.ns_per_task > MIN_SPLIT_NS
                    and size > ceil(remaining / (BALANCE * self.n_workers))):
                size = ceil(remaining / (BALANCE * self.n_workers))
            if size < 1:
                size = 1
        if remaining > 0 and size > remaining:
            size = remaining
        self.last_size = <Py_ssize_t>size
        return self.last_size
