"""The dispatcher: batches, executors, the automatic backend's router, and
``Call``, which runs one ``Parallel.__call__``.

Who does what
-------------
* The caller's thread runs ``Call.next_batch``: it cuts the input into flat
  batches (``_tasks``) sized by ``BatchSizer`` (``_batching``), hands them to
  an executor and waits for completions with the GIL released.
* An executor runs batches.  ``ThreadExecutor`` queues them on a
  ``ThreadPool`` (``_pool``), whose workers pop them without the GIL, take the
  GIL once per batch, run every task in it and report back through
  ``Call.batch_done``.  ``InlineExecutor`` runs a batch as soon as it is
  submitted (the sequential backend); Python executors (processes, dask)
  subclass ``Executor`` and call ``batch_done`` from their own threads.
* ``Router`` sends a call's batches to one executor, then another, as the
  automatic backend (backends/auto.py) decides.
"""

import sys
import threading
import types
from collections import deque

from cpython.exc cimport PyErr_CheckSignals
from libc.stdint cimport int64_t

from cyjob._batching cimport BatchSizer
from cyjob._pool cimport ThreadPool, Work, enter_worker, leave_worker, retire_stuck_workers
from cyjob._sync cimport (
    cyj_add, cyj_cas, cyj_load, cyj_lock, cyj_mark_waking, cyj_monitor_destroy, cyj_monitor_init,
    cyj_now_ns, cyj_publish_cpu, cyj_queue_wake, cyj_signal, cyj_spin_while_equal,
    cyj_spin_while_nonzero, cyj_store, cyj_thread_cpu_ns, cyj_thread_switches, cyj_unlock,
    cyj_wait_until,
)
from cyjob._tasks cimport flat_extend, flat_slice, private_list, run_flat, run_read

from cyjob._tasks import check_tasks
from cyjob.exceptions import TimeoutError as _TimeoutError

cdef extern from "Python.h":
    void PyObject_GC_UnTrack(void *o)

# The caller spins this long before parking while it waits for a batch.
cdef int64_t CALLER_SPIN_NS = 20_000
# Once a batch is done, the caller spins this long at most for the pool's
# workers to let go of the GIL (see Call._park).
cdef int64_t HANDOFF_BACK_SPIN_NS = 5_000
# Longest uninterrupted park of the caller: Ctrl-C is seen within this delay.
cdef int64_t SIGNAL_CHECK_NS = 50_000_000
# The caller runs batches of its own call only while its tasks are known to be
# short: Ctrl-C reaches it only between Python bytecodes or between tasks, so
# a long task that releases the GIL (a 6 s numpy call) run by the caller
# would make it that late.  Measured per call: on average (the sizer's
# estimate; a first batch is never run by the caller), and the slowest batch.
cdef double CALLER_TASK_MAX_NS = 2e6
cdef double CALLER_SLOWEST_TASK_MAX_NS = 50e6
# Time per task of recent list calls on threads, by their first task's code:
# a call of tasks seen short before lets its caller run batches from the
# first one (many small calls in a loop, the caller-helps saving) without
# waiting for a worker to measure one, or, if its caller only waits, go to one
# worker in one batch when it is small (Call._size_small_call).  Keyed by the
# key's address, each entry holding
# `(key, ns)`: hashing a code object hashes its bytecode, names and
# constants (~700 instructions, twice a call), and the key held there keeps
# its address from being reused by another object.
cdef dict _task_ns = {}
# Entries (3 per task) of a lazy input's read-ahead buffer already handed out
# in batches, past which the buffer lets go of them (see Call._take).
cdef Py_ssize_t AHEAD_TRIM = 3 * 128
# The end of an input read by a batch that runs as it reads (next()'s default).
cdef object _END = object()
cdef Py_ssize_t TASK_NS_MAX_ENTRIES = 256


cdef object _task_key(object func):
    """What identifies a task function across calls without keeping its data
    alive: a Python function's (or method's) code, else the callable's type,
    or a module-level builtin itself."""
    try:
        code = getattr(func, "__code__", None)
    except Exception:  # a callable whose __getattr__ fails: its type will do
        return type(func)
    if type(code) is _code_type:
        return code
    if type(func) is _builtin_type:
        owner = getattr(func, "__self__", None)
        if owner is None or type(owner) is _module_type:
            return func
    return type(func)


_builtin_type = types.BuiltinFunctionType
_code_type = types.CodeType
_module_type = types.ModuleType


# --------------------------------------------------------------------------
# running batches

cdef void _execute(Batch batch):
    """Run one batch in this thread unless someone else claimed it first
    (the caller of a call runs its own batches while it waits)."""
    if cyj_cas(&batch.ticket.claimed, 0, 1):
        _execute_claimed(batch)


cdef void _execute_claimed(Batch batch, bint from_queue=False):
    """Run a batch this thread has claimed, and report it (GIL held).

    ``from_queue``: a pool worker popped it and noted in its ticket when,
    and its switch counts, before it waited for the GIL; a measured batch
    counts that wait (GIL-bound work makes a second thread wait there)."""
    cdef Call call = batch.call
    cdef int64_t t0, cpu0 = 0, vol0 = 0, invol0 = 0, vol1, invol1
    cdef bint measure = call.measure_cpu
    if cyj_load(&call.aborted):
        call.batch_done(batch, None, None, 0.0)
        return
    # The thread's CPU clock and switch counts are system calls (~0.5 us
    # each), not vDSO reads: only calls being measured by the auto backend
    # pay for them.  Read inside the wall-clock window, so CPU time never
    # exceeds the wall time.
    t0 = cyj_now_ns()
    if measure:
        if from_queue and batch.ticket.taken_ns > 0:
            batch.waited_ns = t0 - batch.ticket.taken_ns
            vol0, invol0 = batch.ticket.voluntary, batch.ticket.involuntary
        else:
            cyj_thread_switches(&vol0, &invol0)
        cpu0 = cyj_thread_cpu_ns()
    if batch.tasks is None:
        results, error = call._run_read(batch)
    else:
        results, error = run_flat(batch.tasks, &call.aborted)
    if measure:
        batch.cpu_ns = cyj_thread_cpu_ns() - cpu0
        cyj_thread_switches(&vol1, &invol1)
        batch.voluntary = vol1 - vol0
        batch.involuntary = invol1 - invol0
    batch.finished_ns = cyj_now_ns()
    batch.started_ns = t0
    call.batch_done(batch, results, error, <double>(batch.finished_ns - t0))


# --------------------------------------------------------------------------
# batches and executors

cdef class Batch(Work):
    """Consecutive tasks of one call, run together by one worker.

    ``tasks`` is flat: ``[f0, args0, kwargs0, f1, args1, kwargs1, ...]``;
    None for a batch that the caller runs as it reads it (Call._reads_as_it_runs).
    """

    cdef int run_in_worker(self) except -1:
        cdef Call call = self.call
        cdef Batch batch
        call.n_queued -= 1
        _execute_claimed(self, True)
        if call.caller_helps:
            # The call's other batches wait in its own deque rather than
            # in the queue (see ThreadExecutor.submit): take them from there.
            while True:
                batch = call._claim()
                if batch is None:
                    break
                _execute_claimed(batch)
        return 0

    cdef void skipped_in_worker(self):
        self.call.n_queued -= 1

    cdef bint abandoned(self):
        return cyj_load(&self.call.aborted) != 0

    cdef int fail(self, object error) except -1:
        self.call.batch_done(self, None, error, 0.0)
        return 0

    def __len__(self):
        return self.size

    def task_tuples(self):
        """The tasks as a list of ``(func, args, kwargs)`` tuples."""
        flat = self.tasks
        return [(flat[i], flat[i + 1], flat[i + 2]) for i in range(0, len(flat), 3)]

    def __repr__(self):
        return f"<Batch start={self.start} size={self.size} done={self.done}>"


cdef class Executor:
    """Runs batches.  Subclasses implement ``submit`` and, when a batch is
    finished, call ``batch.call.batch_done(batch, results, error, duration_ns)``
    with the GIL held (results=None and error=None means "skipped")."""

    def __init__(self, Py_ssize_t n_workers=1):
        self.n_workers = n_workers
        self.caller_helps = False

    cpdef submit(self, Batch batch):
        raise NotImplementedError

    cpdef call_started(self, Call call, object first_function):
        """Called once before ``call`` cuts its first batch, with the function
        of its first task (an executor that chooses where to run the call
        can size that batch already)."""

    cpdef call_finished(self, Call call):
        """Called once when ``call`` ends: completed, failed, timed out,
        interrupted or abandoned (``call.was_aborted`` tells which).  Process
        and distributed executors stop the call's running work and free its
        resources (temp files) here."""

    cpdef hand_over(self, Batch batch):
        """The caller will not run ``batch`` after all (its tasks are not
        short): have it run by a worker (only thread executors let the
        caller help)."""


cdef class InlineExecutor(Executor):
    """Runs each batch in the caller's thread as soon as it is submitted."""

    cpdef submit(self, Batch batch):
        _execute(batch)


cdef class Router(Executor):
    """Sends a call's batches to ``first`` until a ``target`` is chosen, then
    to the target.

    Routing runs for every batch, so it lives here; the choice does not.  The
    automatic backend (backends/auto.py) chooses in hooks: ``begin(function)``
    before the first batch, and, while it asks for them (``watch_batches``),
    ``watch(batch)`` before a batch is routed and ``ended(call)`` when the
    call ends.  A remembered choice is checked here, per batch, without a
    Python call (``check_cost``), and ``drifted(ns_per_task)`` is called if
    the check fails: many small calls of a function whose place is known run
    no policy code after ``begin``.
    """

    def __init__(self, Py_ssize_t n_workers, Executor first):
        self.n_workers = n_workers
        self.first = first
        # The caller helps only with the first executor's (thread) batches;
        # a target that runs them elsewhere has them claimed as they go.
        self.caller_helps = first.caller_helps

    cpdef call_started(self, Call call, object first_function):
        self.call = call
        self.begin(first_function)

    cpdef submit(self, Batch batch):
        if self.watch_before:
            if self.unwatched > 0:
                self.unwatched -= 1
            else:
                self.watch(batch)
        if self.target is None:
            self.first.submit(batch)
        elif not self.out_of_process or cyj_cas(&batch.ticket.claimed, 0, 1):
            # (Claimed first when it runs elsewhere: otherwise the caller may
            # run it too.  Already claimed: the caller ran it meanwhile.)
            self.target.submit(batch)
        if self.check_tasks > 0:
            # A batch run inline is already measured: the next batch can be
            # sized for what this one showed.
            self._check_cost()

    cpdef hand_over(self, Batch batch):
        # Only batches given to the first executor can still be unclaimed
        # (others were claimed for a process, or run inline at once).
        self.first.hand_over(batch)

    cpdef call_finished(self, Call call):
        if self.watch_end:
            self.ended(call)
        self.first.call_finished(call)
        if self.target is not None and self.target is not self.first:
            self.target.call_finished(call)
        # The call holds this router: break the cycle so that both are
        # freed by reference counting.
        self.call = None
        self.watch_before = self.watch_end = False
        self.unwatched = 0
        self.check_tasks = 0
        self.check_sizer = self.check_then = None

    def route_to(self, Executor target, bint out_of_process=False, bint reads=False):
        """Send the coming batches to ``target`` (None: back to ``first``);
        ``out_of_process``: it runs them elsewhere (the caller must not);
        ``reads``: an inline target may read each batch's tasks from a lazy
        input as it runs them (the batch sizes are this router's choice)."""
        self.target = target
        self.out_of_process = out_of_process and target is not None
        self.target_reads = reads and type(target) is InlineExecutor

    def watch_batches(self, bint before=False, bint end=False):
        """Call ``watch(batch)`` before routing each batch, ``ended(call)``
        when the call ends (before the executors are told)."""
        self.watch_before = before
        self.watch_end = end
        self.unwatched = 0

    def skip_watch(self, Py_ssize_t n_batches):
        """Route the next ``n_batches`` batches without calling ``watch``
        (a policy that knows it has nothing to judge before then)."""
        self.unwatched = n_batches

    def check_cost(self, Py_ssize_t n_tasks, double ns_per_task, double lowest,
                   double highest, BatchSizer then=None):
        """Check the next ``n_tasks`` tasks the call's current sizer observes:
        if each costs between ``lowest`` and ``highest`` times
        ``ns_per_task``, size the rest of the call with ``then`` (if given);
        otherwise call ``drifted(measured_ns_per_task)``."""
        self.check_sizer = self.call.sizer
        self.check_tasks = n_tasks
        self.check_from_tasks = self.check_sizer.n_tasks
        self.check_from_ns = self.check_sizer.work_ns
        self.check_ns = ns_per_task
        self.check_lowest = lowest
        self.check_highest = highest
        self.check_then = then

    cdef int _check_cost(self) except -1:
        cdef BatchSizer sizer = self.check_sizer
        cdef BatchSizer then = self.check_then
        cdef Py_ssize_t n = sizer.n_tasks - self.check_from_tasks
        cdef double per_task, ratio
        if n < self.check_tasks:
            return 0
        self.check_tasks = 0
        self.check_sizer = self.check_then = None
        per_task = (sizer.work_ns - self.check_from_ns) / n
        ratio = per_task / self.check_ns if self.check_ns > 0 else 1.0
        if not (self.check_lowest <= ratio <= self.check_highest):
            self.drifted(per_task)
        elif then is not None:
            self.call.use_sizer(then)
        return 0

    def begin(self, first_function):
        """The call starts; its first task calls ``first_function``."""

    def watch(self, Batch batch):
        """A batch about to be routed (while ``watch_before``)."""

    def drifted(self, double ns_per_task):
        """``check_cost`` measured tasks far from the expected cost."""

    def ended(self, Call call):
        """The call ends (while ``watch_end``): completed, failed or aborted."""


cdef class ThreadExecutor(Executor):
    """Runs batches on a ``ThreadPool``.  With ``caller_helps``, a caller
    whose tasks are known to be short runs batches of its call while it waits
    and counts as one more worker (``n_workers == pool.n_threads + 1``): tiny
    tasks save a GIL hand-off (~15-50 us) per batch that the caller runs
    itself.  Tasks longer or not yet measured go to ``full``, a pool of
    n_workers threads, and the caller only waits: Ctrl-C reaches it at once.
    (The main thread never helps: a task of a function measured short that
    turned long and released the GIL would delay Ctrl-C until it returned;
    see ThreadingBackend.executor.)"""

    def __init__(self, ThreadPool pool, bint caller_helps=False, ThreadExecutor full=None):
        if caller_helps and full is None:
            raise ValueError("a ThreadExecutor whose caller helps needs a full pool")
        self.pool = pool
        self.n_workers = pool.n_threads + caller_helps
        self.caller_helps = caller_helps
        self.full = full

    cpdef submit(self, Batch batch):
        cdef Call call = batch.call
        # Workers stuck on a call that ended must not hold this one up.
        retire_stuck_workers(call.log)
        if self.caller_helps:
            if not call._caller_may_run():
                self.full.hand_over(batch)
                return
            if call.n_queued >= self.pool.n_threads:
                # Enough of this call's batches are queued to wake every
                # thread; the rest wait in the call's own deque, where the
                # caller and the workers take them.  Queued batches the
                # caller runs first would otherwise pile up as stale entries
                # for the workers to skip.
                return
        self._push(batch)

    cpdef hand_over(self, Batch batch):
        if self.caller_helps:
            self.full.hand_over(batch)
        else:
            self._push(batch)

    cpdef call_finished(self, Call call):
        if call.was_aborted:
            # Its running batches may be stuck in long tasks: the pools look
            # for them before the next batch they are given (_pool.retire_stuck_workers).
            self.pool.watch_abandoned()
            if self.full is not None:
                self.full.pool.watch_abandoned()

    cdef int _push(self, Batch batch) except -1:
        cdef int rc
        cdef Call call = batch.call
        call.n_queued += 1
        # The last batch of a call whose caller only waits: the caller's next
        # step is to let go of the GIL and wait, so a parked worker is woken
        # then, not now to wait for the GIL (on the caller's CPU, the one a
        # woken thread is often put on, each such wake-up costs two context
        # switches).
        rc = self.pool.push(batch, call.only_waits and 0 <= call.n_total <= call.n_taken)
        if rc == 3:
            call.wake_owed = &self.pool.queue
            rc = 0
        if rc != 0:
            batch.call.n_queued -= 1
            if rc == 2:
                raise MemoryError("cannot grow the cyjob work queue")
            # Shut down (at exit, say) under a caller that still runs: the
            # work is done in the caller's thread rather than failed.
            _execute(batch)
        return 0

# --------------------------------------------------------------------------
# the dispatcher

# Ctrl-C that CPython discarded.  The main thread's SIGINT handler raises
# KeyboardInterrupt in whatever Python code runs there, and when that code
# is a weakref callback, a __del__ or a GC callback (an object freed while
# the caller pickles a batch or collects results), the interpreter reports
# the exception as "unraisable" and carries on: the Ctrl-C is lost
# (tools/stress.py met one in ~3000 rounds, in a WeakSet callback inside
# cloudpickle).  A hook counts those, and a call made in the main thread
# raises KeyboardInterrupt once it sees the count move.
cdef int64_t _lost_interrupts = 0


class _CountLostInterrupts:
    """``sys.unraisablehook``: counts KeyboardInterrupts discarded in the
    main thread, then hands every report to the hook it replaced."""

    __slots__ = ("previous",)

    def __init__(self, previous):
        self.previous = previous

    def __call__(self, unraisable):
        global _lost_interrupts
        if (isinstance(unraisable.exc_type, type)
                and issubclass(unraisable.exc_type, KeyboardInterrupt)
                and threading.current_thread() is threading.main_thread()):
            _lost_interrupts += 1
        self.previous(unraisable)


cdef int64_t _watch_lost_interrupts() except -2:
    """The lost-interrupt count now, for a call in the main thread (the hook
    put in place if it is not: something may have replaced it), else -1."""
    if threading.current_thread() is not threading.main_thread():
        return -1
    if type(sys.unraisablehook) is not _CountLostInterrupts:
        sys.unraisablehook = _CountLostInterrupts(sys.unraisablehook)
    return _lost_interrupts


cdef object _stop_iteration_error(object error):
    """A task's StopIteration, re-raised as joblib 1.6 does (PEP 479's
    RuntimeError from its generators): raised as itself, it would silently
    end any loop or generator around the call."""
    wrapped = RuntimeError("generator raised StopIteration")
    wrapped.__cause__ = error
    return wrapped


cdef class Call:
    """One ``Parallel.__call__``: feeds batches to an executor, hands back
    finished batches in input order (or completion order), stops at the first
    error.

    Parameters
    ----------
    executor : Executor
    sizer : BatchSizer
    tasks : iterable of (callable, args, kwargs)
        A list or tuple is sliced in place (its length is known: batches can be
        balanced from the start); anything else is read lazily.
    window : int
        Batches allowed in flight (dispatched and not yet finished).
    ordered : bool
        Return batches in input order (else in completion order).
    timeout : float or None
        Longest wait for the next result, in seconds.
    progress : callable or None
        Called with this Call after each finished batch is handed back.
    """

    def __cinit__(self, *args, **kwargs):
        if cyj_monitor_init(&self.monitor) != 0:
            raise MemoryError("cannot initialise a cyjob monitor")
        self.monitor_ready = True

    def __init__(self, Executor executor, BatchSizer sizer, tasks,
                 Py_ssize_t window=1, bint ordered=True, timeout=None,
                 progress=None):
        self.executor = executor
        self.sizer = sizer
        self.window = window if window > 0 else 1
        # Finished batches not handed back yet count against twice the
        # window; an inline executor runs a batch when it is dispatched, so
        # there the window alone bounds how far the results run ahead (a
        # window of 1: each result computed when asked for, as joblib does).
        self.ahead_limit = self.window if type(executor) is InlineExecutor else 2 * self.window
        self.ordered = ordered
        self.timeout = float(timeout) if timeout is not None else -1.0
        self.progress = progress
        self.pending = deque()
        self.completed = deque()
        self.unclaimed = deque()
        self.caller_helps = executor.caller_helps
        self.lost_seen = _watch_lost_interrupts()
        if type(executor) is ThreadExecutor:
            self.where = &(<ThreadExecutor>executor).pool.where
            if not self.caller_helps:
                self.pool_in_gil = &(<ThreadExecutor>executor).pool.n_in_gil
        self.known_ns = -1.0
        if type(tasks) is list or type(tasks) is tuple:
            check_tasks(tasks)  # a malformed task fails before any task runs
            self.ahead = []
            self.source = tasks
            self.n_total = len(tasks)
        else:
            self.iterator = iter(tasks)
            self.ahead = private_list(0)
            self.n_total = -1

    def __dealloc__(self):
        if self.monitor_ready:
            cyj_monitor_destroy(&self.monitor)

    def use_sizer(self, BatchSizer sizer not None):
        """Size the coming batches with another sizer (an executor that has
        just moved the call elsewhere knows better)."""
        self.sizer = sizer

    @property
    def was_aborted(self):
        """True if the call stopped before its end (error, time-out, Ctrl-C, closed)."""
        return cyj_load(&self.aborted) != 0

    @property
    def dispatch_finished(self):
        """True once every task of the input has been dispatched."""
        return self.n_total >= 0 and self.n_taken >= self.n_total

    # -- input ------------------------------------------------------------

    cdef int _pull(self, Py_ssize_t wanted) except -1:
        """Read a lazy input until `wanted` tasks wait in `ahead`, or its end."""
        cdef Py_ssize_t have, got = 0, index
        cdef list ahead = self.ahead
        if self.iterator is None:
            return 0
        have = (len(ahead) - self.ahead_pos) // 3
        if have >= wanted:
            return 0
        index = self.n_taken + have
        got = flat_extend(ahead, self.iterator, wanted - have, index)
        if got < wanted - have:
            self.iterator = None
            self.n_total = self.n_taken + have + got
        return 0

    cdef Py_ssize_t _remaining(self):
        # Keep enough tasks read ahead that the end of a lazy input is seen
        # while the last batches can still be cut smaller.  Fixed-size
        # batches are never cut smaller: a lazy input is then read no
        # further than the batches dispatched (pre_dispatch counts tasks read,
        # as in joblib).
        # (Not for an inline executor: one thread has no end to balance, and
        # its batches read their tasks as they run them, see _reads_as_it_runs.)
        if self.sizer.fixed_size <= 0 and type(self.executor) is not InlineExecutor:
            self._pull(self.sizer.n_workers * (self.sizer.last_size if self.sizer.last_size > 0 else 1))
        if self.n_total < 0:
            return -1
        return self.n_total - self.n_taken

    cdef list _take(self, Py_ssize_t size):
        cdef list flat
        cdef Py_ssize_t i, got, start = self.n_taken
        if self.source is not None:
            flat = flat_slice(self.source, start, min(start + size, self.n_total))
        elif self.iterator is not None and self.ahead_pos == len(self.ahead):
            # Nothing read ahead (fixed-size batches, or the input read only
            # as far as dispatched): the batch is read straight from the
            # input, not copied through the buffer (its three references
            # per task appended, sliced out, then deleted there: ~4% of a
            # call of 100k tiny tasks run inline).
            if self.ahead_pos:
                del self.ahead[:]
                self.ahead_pos = 0
            flat = private_list(0)
            got = flat_extend(flat, self.iterator, size, start)
            if got < size:
                self.iterator = None
                self.n_total = start + got
        else:
            self._pull(size)
            flat = self.ahead[self.ahead_pos:self.ahead_pos + 3 * size]
            PyObject_GC_UnTrack(<void *>flat)
            self.ahead_pos += len(flat)
            # Let go of the tasks handed out (the batch holds them now) once
            # a few hundred have piled up: tasks kept alive here count
            # towards the cyclic GC's threshold, which a long call of tiny
            # tasks would otherwise cross hundreds of times.  (Not sooner:
            # each trim costs a slice deletion, and many small calls cut
            # only a few batches.)
            if self.ahead_pos > AHEAD_TRIM and 2 * self.ahead_pos >= len(self.ahead):
                del self.ahead[:self.ahead_pos]
                self.ahead_pos = 0
        self.n_taken += len(flat) // 3
        return flat

    cdef object _first_function(self):
        """The function of the first task, or None for an empty input."""
        if self.source is not None:
            return (<object>self.source[0])[0] if self.n_total > 0 else None
        self._pull(1)
        return self.ahead[self.ahead_pos] if len(self.ahead) > self.ahead_pos else None

    cdef int _dispatch(self) except -1:
        """Send one more batch; return 0 when the input is exhausted."""
        cdef Py_ssize_t size, start
        cdef list flat
        cdef Batch batch
        if not self.started:
            self.started = True
            first_function = self._first_function()
            if first_function is not None:
                if self.caller_helps or self.only_waits:
                    self.task_key = _task_key(first_function)
                    known = _task_ns.get(<Py_ssize_t><void *>self.task_key)
                    if known is not None and (<tuple>known)[0] is self.task_key:
                        self.known_ns = (<tuple>known)[1]
                        if self.only_waits:
                            self._size_small_call()
                self.executor.call_started(self, first_function)
        size = self.sizer.next_size(self._remaining())
        if size <= 0:
            return 0
        if (not self.ordered and size > 1 and self.sizer.fixed_size <= 0
                and self.n_dispatched_batches < self.window):
            # Completion order: the first window's tasks go one per batch (as
            # joblib's pre-dispatch does), so that a slow one among them
            # never holds back a fast one put in its batch by a sizer that
            # saw only the fastest finish.
            size = 1
        if self._reads_as_it_runs():
            flat = None  # its tasks are read as it runs (_run_read)
            size = self._start_read(size)
            if size <= 0:
                return 0
            start = self.n_taken
        else:
            flat = self._take(size)
            if not flat:
                return 0
            size = len(flat) // 3
            start = self.n_taken - size
        batch = Batch.__new__(Batch)
        batch.call = self
        batch.tasks = flat
        batch.size = size
        batch.start = start
        if self.only_waits:
            batch.ticket.caller_gil_free = &self.gil_free
        self.n_dispatched_batches += 1
        if self.ordered:
            self.pending.append(batch)
        if self.caller_helps and flat is not None:
            # (Not one that reads as it runs: it is this thread's to run, now;
            # a worker that looks here for more of this call's batches must
            # not run it, reading this thread's input.)
            self.unclaimed.append(batch)
        self.executor.submit(batch)
        if self.input_error is not None:
            error, self.input_error = self.input_error, None
            raise error
        return 1

    cdef bint _reads_as_it_runs(self):
        """The next batch is run in this thread as soon as it is submitted
        (an inline executor, or a router sending it to one without a look
        first), and it may read its tasks as it runs them (run_read) instead
        of into a flat batch first: always from a list or tuple, from an
        iterator only if nothing waits read ahead and the batch sizes are
        cyjob's (the router's, or the automatic sizes of an inline call): a
        batch_size given by the user reads each batch whole before running
        it, as joblib does (the input's side effects show)."""
        cdef Router router
        cdef bint sizes_chosen = False
        if type(self.executor) is InlineExecutor:
            sizes_chosen = self.sizer.fixed_size <= 0
        elif isinstance(self.executor, Router):
            router = <Router>self.executor
            if type(router.target) is not InlineExecutor or (
                    router.watch_before and router.unwatched <= 0):
                return False
            sizes_chosen = router.target_reads
        else:
            return False
        if self.iterator is None:
            return self.source is not None
        return sizes_chosen and self.ahead_pos == len(self.ahead)

    cdef Py_ssize_t _start_read(self, Py_ssize_t size) except -1:
        """The size of the next batch that reads as it runs (see
        _reads_as_it_runs), at most ``size``; 0 when the input is exhausted."""
        if self.source is not None:
            return min(size, self.n_total - self.n_taken)
        # Read straight from the input, as _take reads when nothing waits
        # read ahead: the buffer lets go of the tasks it handed out.
        if self.ahead_pos:
            del self.ahead[:]
            self.ahead_pos = 0
        # Its first task is read now, as _take would: an input that ends
        # makes no empty batch, and one that raises fails here.
        first = next(self.iterator, _END)
        if first is _END:
            self.iterator = None
            self.n_total = self.n_taken
            return 0
        self.first_read = first
        return size

    cdef tuple _run_read(self, Batch batch):
        """Run a batch that reads as it runs (tasks None); return
        ``(results, error)`` as run_flat does, with the input's position
        updated first."""
        first, self.first_read = self.first_read, None
        results, error, input_error, n_read, exhausted = run_read(
            self.iterator, self.source, batch.start, batch.size, first, &self.aborted)
        batch.size = n_read
        self.n_taken = batch.start + n_read
        if exhausted:
            self.iterator = None
            self.n_total = self.n_taken
        if input_error is not None:
            # Raised by _dispatch once the batch is done: as from _take.
            self.input_error = input_error
        return results, error

    cdef int _size_small_call(self) except -1:
        """A list call (whose caller only waits) of a few tasks of a function
        seen tiny goes to one worker in one batch, not one task per batch at
        first, passing the GIL between threads (10 tiny tasks from a caller
        that only waits: ~9 us per call in one batch, ~115-190 us split).  Only when
        the whole call is that short: the function may be given much larger
        arguments this time, and a longer call is measured afresh from
        batches of one.  (A generator's input is read no further ahead for
        it.)"""
        cdef Py_ssize_t small
        if self.sizer.fixed_size > 0:
            # The batch size is given (expect() changes nothing): a lazy
            # input is read no further than the batches dispatched.
            return 0
        small = self.sizer.small_call_size(self.known_ns)
        if small > 0:
            self._pull(small + 1)  # a lazy input: does it end within?
            if 0 < self.n_total <= small:
                self.sizer.expect(self.known_ns)
        return 0

    cdef Batch _claim(self):
        """Claim the oldest of this call's batches that nobody runs yet."""
        cdef Batch batch
        while self.unclaimed:
            batch = <Batch>self.unclaimed.popleft()
            if cyj_cas(&batch.ticket.claimed, 0, 1):
                return batch
        return None

    cdef bint _caller_may_run(self):
        """The caller may run batches of this call: its tasks are known to
        be short (see CALLER_TASK_MAX_NS), measured in this call or, before
        its first batch is done, in a recent call of the same function."""
        if self.sizer.n_observed == 0:
            return 0 <= self.known_ns <= CALLER_TASK_MAX_NS
        return (self.sizer.ns_per_task <= CALLER_TASK_MAX_NS
                and self.slowest_task_ns <= CALLER_SLOWEST_TASK_MAX_NS)

    cdef bint _caller_runs_one(self) except -1:
        """Run one of this call's batches that no worker has claimed yet."""
        cdef Batch batch = None
        if not self._caller_may_run():
            # Leave the batches kept for the caller to the workers (one
            # already queued as well is skipped by the worker that pops it
            # second).
            while self.unclaimed:
                batch = <Batch>self.unclaimed.popleft()
                if not cyj_load(&batch.ticket.claimed):
                    self.executor.hand_over(batch)
            return False
        # From the newest end: workers take the oldest.  A batch also sitting
        # in the C queue may be taken: the worker that pops it later sees the
        # claim and skips it without the GIL.
        while self.unclaimed:
            batch = <Batch>self.unclaimed.pop()
            if cyj_cas(&batch.ticket.claimed, 0, 1):
                break
            batch = None
        if batch is None:
            return False
        # While it runs a task the caller is a worker: a nested call made by
        # that task must not add workers of its own.
        enter_worker()
        self.caller_running = True
        try:
            _execute_claimed(batch)
        finally:
            self.caller_running = False
            leave_worker()
        return True

    # -- completion (any thread, GIL held) ----------------------------------

    cpdef batch_done(self, Batch batch, list results, object error, double duration_ns):
        """Record a finished batch and wake the caller.

        ``results`` is None when the batch was skipped (after an abort) or
        failed; ``error`` is the exception that stopped it, if any.
        """
        batch.results = results
        batch.error = error
        batch.duration_ns = duration_ns
        if batch.finished_ns == 0:
            # Run elsewhere (a process, dask): when its results arrived.
            batch.finished_ns = cyj_now_ns()
        batch.done = True
        batch.tasks = None  # free the arguments as soon as possible
        self.n_done_batches += 1
        if error is not None:
            if self.error is None:
                if isinstance(error, StopIteration):
                    error = _stop_iteration_error(error)
                self.error = error
            cyj_store(&self.aborted, 1)
        elif results is not None:
            self.n_completed_tasks += len(results)
            self.sizer.observe(len(results), duration_ns)
            if results and duration_ns / len(results) > self.slowest_task_ns:
                self.slowest_task_ns = duration_ns / len(results)
        if not self.ordered:
            self.completed.append(batch)
        if self.caller_running and not cyj_load(&self.aborted):
            # The caller is running one of our tasks, which may wait for
            # later tasks of this call (threads share memory): dispatch for it,
            # as joblib's callbacks do.
            try:
                self._fill()
            except BaseException as exc:
                if self.error is None:
                    self.error = exc
                cyj_store(&self.aborted, 1)
        self._notify()  # with the GIL, as in submit()

    cdef void _notify(self) noexcept nogil:
        cyj_add(&self.n_events, 1)
        if cyj_load(&self.caller_waiting):
            if self.where != NULL:
                cyj_mark_waking(&self.where.caller)
            cyj_lock(&self.monitor)
            cyj_signal(&self.monitor)
            cyj_unlock(&self.monitor)

    # -- the caller's side --------------------------------------------------

    cdef int _wait(self, int64_t seen, int64_t deadline) except -1:
        """Block with the GIL released until a batch finishes after `seen`,
        or raise TimeoutError once the monotonic `deadline` (-1: none) passes."""
        cdef bint changed = False
        while True:
            with nogil:
                changed = self._park(seen, deadline)
            if self.lost_seen >= 0 and _lost_interrupts != self.lost_seen:
                self.lost_seen = _lost_interrupts
                raise KeyboardInterrupt
            if changed:
                return 0
            PyErr_CheckSignals()
            # Nothing finished for a while: workers stuck on a call that
            # ended may be what holds this one up.
            retire_stuck_workers(self.log)
            if deadline >= 0 and cyj_now_ns() >= deadline:
                raise _TimeoutError(
                    f"no result arrived within timeout={self.timeout:g} seconds")

    def wait_for(self, Batch batch, double seconds):
        """Wait with the GIL released until ``batch`` is done or ``seconds``
        have passed; return whether it is done.  For a policy that must know
        a first measurement before it goes on (a short, bounded wait: no
        signal check, no time-out error)."""
        cdef int64_t deadline = cyj_now_ns() + <int64_t>(seconds * 1e9)
        cdef int64_t seen
        while not batch.done:
            seen = cyj_load(&self.n_events)
            if batch.done or cyj_now_ns() >= deadline:
                break
            with nogil:
                self._park(seen, deadline)
        return batch.done

    cdef bint _park(self, int64_t seen, int64_t deadline) noexcept nogil:
        """Spin, then sleep until a batch finishes after ``seen`` (the event
        count moves on), for SIGNAL_CHECK_NS at most or until the monotonic
        ``deadline`` (-1: none); return whether one did.

        Called with the GIL released, which the workers of a list call
        whose caller runs no batch wait to see (``gil_free``) before they
        take it; and once a batch is done, the caller lets its worker drop
        the GIL before taking it back.  Either thread asking for the GIL
        while the other holds it would sleep on CPython's condition
        variable, and be woken tens of microseconds later."""
        cdef bint changed
        cdef int64_t *caller_cpu = NULL
        cdef const int64_t *runner_cpu = NULL
        if self.where != NULL:
            caller_cpu = &self.where.caller
            runner_cpu = &self.where.runner
        cyj_publish_cpu(caller_cpu)
        cyj_store(&self.gil_free, 1)
        self._pay_wake()
        changed = cyj_spin_while_equal(&self.n_events, seen, CALLER_SPIN_NS, runner_cpu)
        if not changed:
            changed = self._sleep(seen, deadline)
            cyj_publish_cpu(caller_cpu)  # woken: maybe on another CPU
        cyj_store(&self.gil_free, 0)
        if changed and self.pool_in_gil != NULL:
            cyj_spin_while_nonzero(self.pool_in_gil, HANDOFF_BACK_SPIN_NS, runner_cpu)
        return changed

    cdef void _pay_wake(self) noexcept nogil:
        """Wake the worker that a deferred push owes (see ThreadExecutor._push)."""
        if self.wake_owed != NULL:
            cyj_mark_waking(&self.where.runner)
            cyj_queue_wake(self.wake_owed)
            self.wake_owed = NULL

    cdef bint _sleep(self, int64_t seen, int64_t deadline) noexcept nogil:
        """_park's sleep, once its spin is over."""
        cdef int64_t until = cyj_now_ns() + SIGNAL_CHECK_NS
        if deadline >= 0 and deadline < until:
            until = deadline
        cyj_lock(&self.monitor)
        cyj_store(&self.caller_waiting, 1)
        while cyj_load(&self.n_events) == seen:
            if cyj_wait_until(&self.monitor, until):
                break
        cyj_store(&self.caller_waiting, 0)
        cyj_unlock(&self.monitor)
        return cyj_load(&self.n_events) != seen

    cdef int _fill(self) except -1:
        # `window` batches may be running; finished ones waiting to be handed
        # back (behind a slow batch, or an inline executor that finishes at
        # once) count against `ahead_limit`, so the input is read only so far
        # ahead of the results.
        if self.filling:
            return 0  # a generator must not be resumed while it runs
        self.filling = True
        try:
            while (self.n_dispatched_batches - self.n_done_batches < self.window
                   and self.n_dispatched_batches - self.n_returned_batches < self.ahead_limit
                   and not cyj_load(&self.aborted)):
                if not self._dispatch():
                    break
        finally:
            self.filling = False
        return 0

    def start(self):
        """Dispatch the first batches now (a generator's results start
        computing before its first ``next()``, as with joblib)."""
        try:
            self._fill()
        except BaseException:
            self.abort()
            raise

    cpdef Batch next_batch(self):
        """The next finished batch (input or completion order), or None at
        the end.  Raises the first task error, TimeoutError or
        KeyboardInterrupt, after aborting what is left of the call."""
        cdef int64_t seen, deadline = -1
        cdef Batch batch
        if self.finished:
            return None
        if self.timeout >= 0:
            # The time-out counts the wait for this result, whatever other
            # batches finish meanwhile (joblib's meaning).
            deadline = cyj_now_ns() + <int64_t>(self.timeout * 1e9)
        try:
            while True:
                seen = cyj_load(&self.n_events)
                if self.error is not None:
                    raise self.error
                self._fill()
                if self.ordered:
                    if self.pending:
                        batch = <Batch>self.pending[0]
                        if batch.done and batch.results is not None:
                            self.pending.popleft()
                            self.n_returned_batches += 1
                            self._report()
                            return batch
                        if batch.done and self.error is None:
                            # Skipped (results None) yet the call has no error:
                            # never hand back a hole in the results.
                            raise RuntimeError(f"cyjob internal error: {batch!r} was "
                                               "skipped although the call did not fail")
                    elif self.dispatch_finished:
                        break
                else:
                    if self.completed:
                        batch = <Batch>self.completed.popleft()
                        if batch.results is not None:
                            self.n_returned_batches += 1
                            self._report()
                            return batch
                    elif self.dispatch_finished and self.n_done_batches == self.n_dispatched_batches:
                        break
                if self.error is not None:
                    raise self.error
                if self.caller_helps and self._caller_runs_one():
                    continue
                self._wait(seen, deadline)
        except BaseException:
            self.abort()
            raise
        self._release()
        self.executor.call_finished(self)
        self._report()
        return None

    cdef void _release(self):
        """The call is over: drop the input (the caller's task list and its
        arguments) and the batches that still point back at this call, so
        that all of it is freed now by reference counting, not by a later
        pass of the cyclic GC."""
        self.finished = True
        self._pay_wake()  # (a call that failed before it waited)
        self.iterator = None
        self.source = None
        self.ahead = None
        self.first_read = self.input_error = None
        self.unclaimed.clear()
        if self.task_key is not None and self.sizer.n_observed > 0:
            if len(_task_ns) >= TASK_NS_MAX_ENTRIES:
                _task_ns.clear()
            _task_ns[<Py_ssize_t><void *>self.task_key] = (
                self.task_key,
                self.sizer.ns_per_task if self.slowest_task_ns <= CALLER_SLOWEST_TASK_MAX_NS
                else self.slowest_task_ns)
            self.task_key = None

    cdef void _report(self) except *:
        if self.progress is not None:
            self.progress(self)

    def collect(self):
        """Run the whole call; return every result in one list."""
        cdef list out = []
        cdef Batch batch
        self.only_waits = self.pool_in_gil != NULL  # (threads; the caller never helps)
        while True:
            batch = self.next_batch()
            if batch is None:
                return out
            out.extend(batch.results)

    cpdef void abort(self):
        """Stop dispatching; workers skip this call's queued batches and stop
        running batches before their next task."""
        cdef bint was_finished = self.finished
        cyj_store(&self.aborted, 1)
        self._release()
        if not was_finished:
            self.executor.call_finished(self)
