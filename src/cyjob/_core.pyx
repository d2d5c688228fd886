# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""The scheduling core: delayed tasks, batches, the dispatcher and the thread pool.

Who does what
-------------
* The caller's thread runs ``Call.next_batch``: it pulls tasks from the input,
  cuts them into batches sized by ``BatchSizer``, hands them to an executor and
  waits for completions with the GIL released.
* An executor runs batches.  ``ThreadPool`` keeps its batches in a C queue
  (csrc/cyj_queue.h) that worker threads pop without the GIL; a worker takes the
  GIL once per batch, runs every task in it, and reports back through
  ``Call.batch_done``.  ``InlineExecutor`` runs a batch as soon as it is
  submitted (the sequential backend); Python executors (processes, dask)
  subclass ``Executor`` and call ``batch_done`` from their own threads.

Reference rule for the C queue: ``ThreadPool.submit`` takes one reference to
the batch (with the GIL) before pushing its pointer; the worker that pops the
pointer owns that reference and drops it with the GIL.  Nothing else in C ever
touches a Python object.
"""

import itertools
import os
from collections.abc import Mapping
import sys
import threading
from collections import deque

from cpython.exc cimport PyErr_CheckSignals
from cpython.object cimport PyObject
from cpython.ref cimport Py_DECREF, Py_INCREF
from libc.stdint cimport int64_t

from cyjob._batching cimport BatchSizer
from cyjob._sync cimport (
    cyj_add, cyj_cas, cyj_load, cyj_lock, cyj_monitor_destroy, cyj_monitor_init,
    cyj_now_ns, cyj_thread_cpu_ns, cyj_thread_switches, cyj_queue_close, cyj_queue_destroy, cyj_queue_init,
    cyj_queue_pop, cyj_queue_push, cyj_queue_try_pop, cyj_signal,
    cyj_spin_while_equal, cyj_store, cyj_ticket, cyj_unlock, cyj_wait_until,
)

from cyjob.exceptions import PoolShutdownError, TimeoutError as _TimeoutError

cdef extern from "Python.h":
    object PyObject_Call(object callable, object args, PyObject *kwargs)
    Py_ssize_t PyDict_GET_SIZE(object d)
    bint PyObject_IS_GC(object o)
    int PyObject_GC_IsTracked(object o)
    void PyObject_GC_UnTrack(void *o)

# A waiting worker spins this long before parking on the queue's condition
# variable; a parked wake-up costs ~15 us, and calls of a few tiny tasks
# arrive closer together than that (benchmarks/bench_overhead.py, small calls).
cdef int64_t WORKER_SPIN_NS = 50_000
# The caller spins this long before parking while it waits for a batch.
cdef int64_t CALLER_SPIN_NS = 20_000
# Longest uninterrupted park of the caller: Ctrl-C is seen within this delay.
cdef int64_t SIGNAL_CHECK_NS = 50_000_000
# Tasks between two looks at the clock in a batch (a vDSO clock read ~20 ns).
cdef Py_ssize_t YIELD_CHECK_EVERY = 64

_islice = itertools.islice


# --------------------------------------------------------------------------
# delayed

cdef class DelayedFunction:
    """``delayed(f)``: calling it returns the task ``(f, args, kwargs)``.

    ``__name__``, ``__doc__``, ``__wrapped__``... are read from ``f`` when
    asked for, so making the wrapper costs an allocation and each call a
    tuple (joblib runs ``functools.wraps`` on every call, ~2 us per task).
    """

    cdef readonly object func

    def __init__(self, func):
        if not callable(func):
            raise TypeError(f"delayed() expects a callable, got {type(func).__name__}")
        self.func = func

    def __call__(self, *args, **kwargs):
        return (self.func, args, kwargs)

    @property
    def __wrapped__(self):
        return self.func

    @property
    def __name__(self):
        return getattr(self.func, "__name__", type(self.func).__name__)

    @property
    def __qualname__(self):
        return getattr(self.func, "__qualname__", self.__name__)

    @property
    def __doc__(self):
        return getattr(self.func, "__doc__", None)

    @property
    def __module__(self):
        return getattr(self.func, "__module__", None)

    def __reduce__(self):
        # As a decorator, the module attribute named like the function is
        # this wrapper: pickle it by name, as pickle does plain functions.
        module = sys.modules.get(getattr(self.func, "__module__", None) or "")
        name = getattr(self.func, "__qualname__", None)
        if module is not None and name and "<" not in name:
            obj = module
            for part in name.split("."):
                obj = getattr(obj, part, None)
            if obj is self:
                return name
        return (DelayedFunction, (self.func,))

    def __repr__(self):
        return f"delayed({self.func!r})"


# `delayed(f)(x) for x in xs` asks for the same wrapper once per task: keep the
# last one.  A race between threads at worst makes one more wrapper.
cdef object _last_func = None
cdef DelayedFunction _last_wrapper = None


def delayed(function):
    """Capture the arguments of a function to run it later in ``Parallel``.

    ``delayed(f)(*args, **kwargs)`` returns the plain tuple
    ``(f, args, kwargs)``.  Works as a decorator too.

    Parameters
    ----------
    function : callable
        The function to call.

    Returns
    -------
    callable
        A wrapper with ``function``'s name and docstring.
    """
    global _last_func, _last_wrapper
    if function is _last_func:
        return _last_wrapper
    wrapper = DelayedFunction(function)
    _last_func, _last_wrapper = function, wrapper
    return wrapper


# --------------------------------------------------------------------------
# task validation

cdef inline bint _is_clean_task(object t):
    return (type(t) is tuple and len(<tuple>t) == 3
            and type((<tuple>t)[1]) is tuple and type((<tuple>t)[2]) is dict
            and callable((<tuple>t)[0]))


cdef tuple _coerce_task(object t, Py_ssize_t index):
    """Turn any (callable, args, kwargs) sequence into the canonical tuple."""
    if not isinstance(t, (tuple, list)) or len(t) != 3:
        raise TypeError(
            f"task {index} is not a (function, args, kwargs) triple as made by "
            f"delayed(f)(...): got {type(t).__name__} {_short_repr(t)}")
    func, args, kwargs = t
    if not callable(func):
        raise TypeError(f"task {index}: the function {_short_repr(func)} is not callable")
    if type(args) is not tuple:
        if not isinstance(args, (tuple, list)):
            raise TypeError(
                f"task {index}: args must be a tuple or list, got {type(args).__name__}")
        args = tuple(args)
    if type(kwargs) is not dict:
        if kwargs is None:
            kwargs = {}
        elif isinstance(kwargs, Mapping):
            kwargs = dict(kwargs)
        else:
            raise TypeError(
                f"task {index}: kwargs must be a mapping, got {type(kwargs).__name__}")
    return (func, args, kwargs)


cdef str _short_repr(object o):
    cdef str r
    try:
        r = repr(o)
    except Exception:
        r = object.__repr__(o)
    return r if len(r) <= 80 else r[:77] + "..."


cdef inline void _append_task(list flat, object task, Py_ssize_t index) except *:
    """Append a task to a flat batch as three items: func, args, kwargs.

    Batches are flat lists rather than lists of task tuples so that the
    tuples the user's generator made die at once: tens of thousands of live
    tuples waiting in batches would make the cyclic GC promote and rescan them
    (it tripled the time of 200k tiny tasks, benchmarks/bench_overhead.py).
    """
    if not _is_clean_task(task):
        task = _coerce_task(task, index)
    flat.append((<tuple>task)[0])
    _untrack_if_atomic(<tuple>(<tuple>task)[1])
    flat.append((<tuple>task)[1])
    flat.append((<tuple>task)[2])


cdef inline list _private_list(Py_ssize_t n):
    """A list only cyjob ever references (a batch's tasks or results, the
    look-ahead buffer), kept out of the cyclic GC.

    Nothing outside the core holds a reference to it, so no reference cycle
    can pass through it, and it is freed by reference counting like any
    list.  Left tracked, every young-generation collection would walk its
    thousands of items: on 200k tiny tasks on threads, 5x the GC time of the
    same tasks run inline (benchmarks/bench_overhead.py).
    """
    cdef list lst = [None] * n
    PyObject_GC_UnTrack(<void *>lst)
    return lst


cdef inline void _untrack_if_atomic(tuple args):
    """Take an args tuple that cannot be part of a reference cycle out of the
    cyclic GC now, by CPython's own rule (_PyTuple_MaybeUntrack): every item
    is of a type the GC ignores (numbers, strings, arrays) or an untracked
    tuple.  The GC would do it at its next pass, after scanning it first."""
    cdef object item
    if not PyObject_GC_IsTracked(args):
        return
    for item in args:
        if PyObject_IS_GC(item) and (type(item) is not tuple or PyObject_GC_IsTracked(item)):
            return
    PyObject_GC_UnTrack(<void *>args)


def check_tasks(tasks):
    """Raise TypeError for the first malformed task of a sequence."""
    cdef Py_ssize_t i = 0
    for t in tasks:
        if not _is_clean_task(t):
            _coerce_task(t, i)
        i += 1


# --------------------------------------------------------------------------
# running tasks

cdef int64_t _switch_interval_ns = <int64_t>(sys.getswitchinterval() * 1e9)


cdef tuple _run(list flat, int64_t *abort_flag):
    """Run a flat batch in order with the GIL held; return (results, error).

    Calling C-implemented functions from compiled code never passes through
    the eval loop, so nothing would ever offer the GIL to other threads: give
    it up once per switch interval, as the interpreter does.
    """
    cdef Py_ssize_t i, n = len(flat) // 3
    cdef list results = _private_list(n)
    cdef object kwargs
    cdef int64_t last_yield = cyj_now_ns(), now
    for i in range(n):
        if (i % YIELD_CHECK_EVERY) == YIELD_CHECK_EVERY - 1:
            if abort_flag != NULL and cyj_load(abort_flag):
                return None, None
            now = cyj_now_ns()
            if now - last_yield >= _switch_interval_ns:
                with nogil:
                    pass
                last_yield = now
        kwargs = flat[3 * i + 2]
        try:
            if PyDict_GET_SIZE(kwargs) == 0:
                results[i] = PyObject_Call(flat[3 * i], flat[3 * i + 1], NULL)
            else:
                results[i] = PyObject_Call(flat[3 * i], flat[3 * i + 1], <PyObject *>kwargs)
        except BaseException as exc:
            return None, exc
    return results, None


def run_tasks(list flat):
    """Run a flat batch; return ``(results, error, duration_ns)``.

    Used by out-of-process workers; exactly what a thread worker does.
    """
    cdef int64_t t0 = cyj_now_ns()
    results, error = _run(flat, NULL)
    return results, error, <double>(cyj_now_ns() - t0)


cdef inline void _execute(Batch batch):
    """Run one batch in this thread unless someone else claimed it first
    (the caller of a call runs its own batches while it waits)."""
    if cyj_cas(&batch.ticket.claimed, 0, 1):
        _execute_claimed(batch)


cdef void _execute_claimed(Batch batch, int64_t popped_ns=0, int64_t vol0=-1,
                           int64_t invol0=-1):
    """Run a batch this thread has claimed, and report it (GIL held).

    A pool worker passes when it took the batch from the queue, before it
    waited for the GIL, and its switch counts then: a measured batch's wait
    for the GIL is part of what the auto backend must see."""
    cdef Call call = batch.call
    cdef int64_t t0, cpu0 = 0, vol1, invol1
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
        if vol0 < 0:
            cyj_thread_switches(&vol0, &invol0)
        elif popped_ns > 0:
            batch.waited_ns = t0 - popped_ns
        cpu0 = cyj_thread_cpu_ns()
    results, error = _run(batch.tasks, &call.aborted)
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

cdef class Batch:
    """Consecutive tasks of one call, run together by one worker.

    ``tasks`` is flat: ``[f0, args0, kwargs0, f1, args1, kwargs1, ...]``.
    """

    def __cinit__(self):
        self.ticket.owner = <void *>self

    @property
    def claimed(self):
        """True once someone runs (or has run) this batch."""
        return cyj_load(&self.ticket.claimed) != 0

    @claimed.setter
    def claimed(self, bint value):
        cyj_store(&self.ticket.claimed, value)

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
        self.caller_may_help = False

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


cdef class InlineExecutor(Executor):
    """Runs each batch in the caller's thread as soon as it is submitted."""

    cpdef submit(self, Batch batch):
        _execute(batch)


cdef class Router(Executor):
    """Sends a call's batches to ``first`` until a ``target`` is chosen, then
    to the target (the default backend, backends/auto.py, chooses).

    Routing runs for every batch, so it lives here, and so does the check of a
    choice made from an earlier call's figures (``verify``).  The policy is
    Python and runs only in hooks: ``begin(function)`` before the first batch,
    ``watch(batch)`` before each batch while ``watching`` is set, and
    ``drifted(ns_per_task)`` if a verification fails.
    """

    def __init__(self, Py_ssize_t n_workers, Executor first):
        self.n_workers = n_workers
        self.first = first
        # The caller helps only with the first executor's (thread) batches;
        # a target that runs them elsewhere has them claimed as they go.
        self.caller_may_help = first.caller_may_help

    cpdef call_started(self, Call call, object first_function):
        self.call = call
        self.begin(first_function)

    cpdef submit(self, Batch batch):
        if self.watching:
            self.watch(batch)
        if self.target is None:
            self.first.submit(batch)
        elif not self.out_of_process or cyj_cas(&batch.ticket.claimed, 0, 1):
            # (Claimed first when it runs elsewhere: otherwise the caller may
            # run it too.  Already claimed: the caller ran it meanwhile.)
            self.target.submit(batch)
        if self.verify_tasks > 0:
            # After routing: a batch run inline is already measured, so the
            # next batch can be sized for the outcome.
            self._verify()

    cpdef call_finished(self, Call call):
        self.first.call_finished(call)
        if self.target is not None and self.target is not self.first:
            self.target.call_finished(call)
        # The call holds this router: break the cycle so that both are
        # freed by reference counting.
        self.call = None
        self.verify_sizer = self.then_sizer = None
        self.verify_tasks = 0

    def verify(self, Py_ssize_t n_tasks, double ns_per_task, double lowest, double highest,
               BatchSizer then=None):
        """Check the choice on the next ``n_tasks`` tasks the call's current
        sizer observes: if each costs between ``lowest`` and ``highest``
        times ``ns_per_task``, size the rest of the call with ``then`` (if
        given); otherwise call ``drifted(measured_ns_per_task)``."""
        self.verify_sizer = self.call.sizer
        self.verify_tasks = n_tasks
        self.verify_from_tasks = self.verify_sizer.n_tasks
        self.verify_from_ns = self.verify_sizer.work_ns
        self.expected_ns = ns_per_task
        self.lowest = lowest
        self.highest = highest
        self.then_sizer = then

    cdef int _verify(self) except -1:
        cdef Py_ssize_t n = self.verify_sizer.n_tasks - self.verify_from_tasks
        cdef double per_task, ratio
        if n < self.verify_tasks:
            return 0
        self.verify_tasks = 0
        per_task = (self.verify_sizer.work_ns - self.verify_from_ns) / n
        ratio = per_task / self.expected_ns if self.expected_ns > 0 else 1.0
        if not (self.lowest <= ratio <= self.highest):
            self.drifted(per_task)
        elif self.then_sizer is not None:
            self.call.use_sizer(self.then_sizer)
        self.verify_sizer = self.then_sizer = None
        return 0

    def begin(self, first_function):
        """The call starts; its first task calls ``first_function``."""

    def watch(self, Batch batch):
        """A batch about to be routed while ``watching`` is set."""

    def drifted(self, double ns_per_task):
        """``verify`` measured tasks far from the expected cost."""


class _WorkerState(threading.local):
    # A class default, so that reading it in a thread that never set it
    # costs no AttributeError (every call reads it).
    pool = None


_worker_state = _WorkerState()


def in_worker_thread():
    """True inside a cyjob thread-pool worker (used to run nested calls inline)."""
    return _worker_state.pool is not None


# Stale queue entries (batches the caller ran first) a worker drops in one go
# once it holds the GIL: it skips them without it.
cdef enum:
    STALE_BATCH = 1024


def _worker_main(ThreadPool pool):
    cdef void *item
    cdef cyj_ticket *ticket
    cdef int64_t popped_ns = 0, vol0 = -1, invol0 = -1
    cdef void *stale[STALE_BATCH]
    cdef Py_ssize_t n_stale = 0, i
    cdef Batch batch
    cdef Call call
    _worker_state.pool = pool
    try:
        while True:
            ticket = NULL
            with nogil:
                while True:
                    if n_stale > 0:
                        item = cyj_queue_try_pop(&pool.queue)  # flush before parking
                    else:
                        item = cyj_queue_pop(&pool.queue, WORKER_SPIN_NS)
                    if item == NULL:
                        break
                    if cyj_cas(&(<cyj_ticket *>item).claimed, 0, 1):
                        ticket = <cyj_ticket *>item
                        # Before waiting for the GIL (one system call per
                        # batch, ~0.3 us): see _execute_claimed.
                        popped_ns = cyj_now_ns()
                        cyj_thread_switches(&vol0, &invol0)
                        break
                    stale[n_stale] = (<cyj_ticket *>item).owner
                    n_stale += 1
                    if n_stale == STALE_BATCH:
                        break
            for i in range(n_stale):  # the queue's references to stale batches
                batch = <Batch>stale[i]
                batch.call.n_queued -= 1
                Py_DECREF(batch)
            n_stale = 0
            batch = None
            if ticket == NULL:
                if item == NULL and pool.closed:
                    break
                continue
            batch = <Batch>ticket.owner
            Py_DECREF(batch)  # the queue's reference; `batch` holds its own
            call = batch.call
            call.n_queued -= 1
            _execute_claimed(batch, popped_ns, vol0, invol0)
            if call.helps:
                # The call's other batches wait in its own deque rather than
                # in the queue (see ThreadPool.submit): take them from there.
                while True:
                    batch = call._claim()
                    if batch is None:
                        break
                    _execute_claimed(batch)
            batch = None
            call = None
    finally:
        _worker_state.pool = None


cdef class ThreadPool(Executor):
    """Worker threads started through ``threading`` (so they show up in
    ``threading.enumerate()`` and work with profilers and faulthandler) that
    wait for batches in C without the GIL."""

    def __cinit__(self, *args, **kwargs):
        if cyj_queue_init(&self.queue, 64) != 0:
            raise MemoryError("cannot allocate the cyjob work queue")
        self.queue_ready = True

    def __init__(self, Py_ssize_t n_threads, bint caller_helps=False,
                 str name="cyjob-worker"):
        """``n_threads`` worker threads.  With ``caller_helps``, a caller
        runs its own batches while it waits and counts as one more worker
        (``n_workers == n_threads + 1``): at most n_jobs batches of a call run
        at once either way, and tiny tasks save a GIL hand-off (~15-50 us)
        per batch that the caller runs itself."""
        if n_threads < 1:
            raise ValueError(f"n_threads must be >= 1, got {n_threads}")
        self.n_workers = n_threads + caller_helps
        self.n_threads = n_threads
        self.caller_may_help = caller_helps
        self.owner_pid = os.getpid()
        self.threads = []
        for i in range(n_threads):
            t = threading.Thread(target=_worker_main, args=(self,),
                                 name=f"{name}-{i}", daemon=True)
            t.start()
            self.threads.append(t)

    cpdef submit(self, Batch batch):
        cdef int rc
        if self.caller_may_help and batch.call.n_queued >= self.n_threads:
            # Enough of this call's batches are queued to wake every thread;
            # the rest wait in the call's own deque, where the caller and the
            # workers take them.  Queued batches the caller runs first would
            # otherwise pile up as stale entries for the workers to skip.
            return
        batch.call.n_queued += 1
        Py_INCREF(batch)
        # Pushing keeps the GIL: releasing it would wake threads waiting for
        # it only to make them sleep again.  Safe, as no thread ever waits for
        # the GIL while holding the queue's mutex.
        rc = cyj_queue_push(&self.queue, <void *>&batch.ticket)
        if rc != 0:
            batch.call.n_queued -= 1
            Py_DECREF(batch)
            if not self.closed:
                raise MemoryError("cannot grow the cyjob work queue")
            # Shut down (at exit, say) under a caller that still runs: the
            # work is done in the caller's thread rather than failed.
            _execute(batch)

    def shutdown(self, bint wait=True, timeout=None, bint at_exit=False):
        """Stop the workers.  Batches still queued are reported as failed,
        except at exit: then only daemon threads can be waiting for them,
        and they are about to be frozen, so the batches are just dropped
        (a failure would print a traceback from each of those threads)."""
        cdef void *item
        cdef Batch batch
        if self.closed:
            return
        self.closed = True
        with nogil:
            cyj_queue_close(&self.queue)
        while True:
            with nogil:
                item = cyj_queue_try_pop(&self.queue)
            if item == NULL:
                break
            batch = <Batch>(<cyj_ticket *>item).owner
            Py_DECREF(batch)
            if not at_exit and cyj_cas(&batch.ticket.claimed, 0, 1):
                batch.call.batch_done(
                    batch, None,
                    PoolShutdownError("the cyjob thread pool was shut down before this batch ran"),
                    0.0)
        if wait:
            current = threading.current_thread()
            for t in self.threads:
                if t is not current:
                    t.join(timeout)

    def alive(self):
        """True while every worker thread is running in this process."""
        return (not self.closed and self.owner_pid == os.getpid()
                and all(t.is_alive() for t in self.threads))

    def __dealloc__(self):
        # After fork() the child inherits the queue's mutex in whatever state
        # a parent thread left it: never touch it there, leak it instead.
        if self.queue_ready and self.owner_pid == os.getpid():
            cyj_queue_destroy(&self.queue)


# --------------------------------------------------------------------------
# the dispatcher

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
        self.ordered = ordered
        self.timeout = float(timeout) if timeout is not None else -1.0
        self.progress = progress
        self.pending = deque()
        self.completed = deque()
        self.unclaimed = deque()
        self.helps = executor.caller_may_help
        if type(tasks) is list or type(tasks) is tuple:
            check_tasks(tasks)  # a malformed task fails before any task runs
            self.ahead = []
            self.source = tasks
            self.n_total = len(tasks)
        else:
            self.iterator = iter(tasks)
            self.ahead = _private_list(0)
            self.n_total = -1

    def __dealloc__(self):
        if self.monitor_ready:
            cyj_monitor_destroy(&self.monitor)

    def use_sizer(self, BatchSizer sizer):
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
        for task in _islice(self.iterator, wanted - have):
            _append_task(ahead, task, index + got)
            got += 1
        if got < wanted - have:
            self.iterator = None
            self.n_total = self.n_taken + have + got
        return 0

    cdef Py_ssize_t _remaining(self):
        # Keep enough tasks read ahead that the end of a lazy input is seen
        # while the last batches can still be cut smaller.
        self._pull(self.sizer.n_workers * (self.sizer.last_size if self.sizer.last_size > 0 else 1))
        if self.n_total < 0:
            return -1
        return self.n_total - self.n_taken

    cdef list _take(self, Py_ssize_t size):
        cdef list flat
        cdef Py_ssize_t i, start = self.n_taken
        if self.source is not None:
            flat = _private_list(0)
            for i in range(start, min(start + size, self.n_total)):
                _append_task(flat, self.source[i], i)
        else:
            self._pull(size)
            flat = self.ahead[self.ahead_pos:self.ahead_pos + 3 * size]
            PyObject_GC_UnTrack(<void *>flat)
            self.ahead_pos += len(flat)
            if self.ahead_pos > 3 * 4096 and 2 * self.ahead_pos >= len(self.ahead):
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
        cdef Py_ssize_t size
        cdef list flat
        cdef Batch batch
        if not self.started:
            self.started = True
            first_function = self._first_function()
            if first_function is not None:
                self.executor.call_started(self, first_function)
        size = self.sizer.next_size(self._remaining())
        if size <= 0:
            return 0
        flat = self._take(size)
        if not flat:
            return 0
        batch = Batch.__new__(Batch)
        batch.call = self
        batch.tasks = flat
        batch.size = len(flat) // 3
        batch.start = self.n_taken - batch.size
        self.n_dispatched_batches += 1
        self.n_dispatched_tasks += batch.size
        if self.ordered:
            self.pending.append(batch)
        if self.helps:
            self.unclaimed.append(batch)
        self.executor.submit(batch)
        return 1

    cdef Batch _claim(self):
        """Claim the oldest of this call's batches that nobody runs yet."""
        cdef Batch batch
        while self.unclaimed:
            batch = <Batch>self.unclaimed.popleft()
            if cyj_cas(&batch.ticket.claimed, 0, 1):
                return batch
        return None

    cdef bint _help(self) except -1:
        """Run one of this call's batches that no worker has claimed yet."""
        cdef Batch batch = None
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
        previous = _worker_state.pool
        _worker_state.pool = self.executor
        self.caller_busy = True
        try:
            _execute_claimed(batch)
        finally:
            self.caller_busy = False
            _worker_state.pool = previous
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
                self.error = error
            cyj_store(&self.aborted, 1)
        elif results is not None:
            self.n_completed_tasks += len(results)
            self.sizer.observe(len(results), duration_ns)
        if not self.ordered:
            self.completed.append(batch)
        if self.caller_busy and not cyj_load(&self.aborted):
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
            cyj_lock(&self.monitor)
            cyj_signal(&self.monitor)
            cyj_unlock(&self.monitor)

    # -- the caller's side --------------------------------------------------

    cdef int _wait(self, int64_t seen, int64_t deadline) except -1:
        """Block with the GIL released until a batch finishes after `seen`,
        or raise TimeoutError once the monotonic `deadline` (-1: none) passes."""
        cdef int64_t slice_end
        cdef bint changed = False
        while True:
            with nogil:
                changed = cyj_spin_while_equal(&self.n_events, seen, CALLER_SPIN_NS)
                if not changed:
                    slice_end = cyj_now_ns() + SIGNAL_CHECK_NS
                    if deadline >= 0 and deadline < slice_end:
                        slice_end = deadline
                    cyj_lock(&self.monitor)
                    cyj_store(&self.caller_waiting, 1)
                    while cyj_load(&self.n_events) == seen:
                        if cyj_wait_until(&self.monitor, slice_end):
                            break
                    cyj_store(&self.caller_waiting, 0)
                    cyj_unlock(&self.monitor)
                    changed = cyj_load(&self.n_events) != seen
            if changed:
                return 0
            PyErr_CheckSignals()
            if deadline >= 0 and cyj_now_ns() >= deadline:
                raise _TimeoutError(
                    f"no result arrived within timeout={self.timeout:g} seconds")

    cdef int _fill(self) except -1:
        # `window` batches may be running; finished ones waiting to be handed
        # back (behind a slow batch, or an inline executor that finishes at
        # once) count against twice that, so the input is read only so far
        # ahead of the results.
        if self.filling:
            return 0  # a generator must not be resumed while it runs
        self.filling = True
        try:
            while (self.n_dispatched_batches - self.n_done_batches < self.window
                   and self.n_dispatched_batches - self.n_returned_batches < 2 * self.window
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
                if self.helps and self._help():
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
        self.iterator = None
        self.source = None
        self.ahead = None
        self.unclaimed.clear()

    cdef void _report(self) except *:
        if self.progress is not None:
            self.progress(self)

    def collect(self):
        """Run the whole call; return every result in one list."""
        cdef list out = []
        cdef Batch batch
        while True:
            batch = self.next_batch()
            if batch is None:
                return out
            out.extend(batch.results)

    cpdef void abort(self):
        """Stop dispatching; workers skip this call's queued batches and stop
        running batches at their next check (every few tasks)."""
        cdef bint was_finished = self.finished
        cyj_store(&self.aborted, 1)
        self._release()
        if not was_finished:
            self.executor.call_finished(self)
