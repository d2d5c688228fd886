"""The thread pool: worker threads that wait for work in C without the GIL.

A worker pops a ``Work`` from the C queue (csrc/cyj_queue.h) without the GIL,
claims it, takes the GIL once and runs it.  The pool knows nothing of calls
and batches: a ``Batch`` (``_dispatch``) is a ``Work`` whose ``run_in_worker``
runs its tasks and reports to its call; ``ThreadPool.submit(fn, callback)``
runs one function as a ``Job`` (the joblib bridge's future).

Reference rule for the C queue: ``push`` takes one reference to the work
(with the GIL) before pushing its ticket; the worker that pops the ticket owns
that reference and drops it with the GIL.  Nothing else in C ever touches a
Python object.
"""

import os
import threading
import time

from cpython.ref cimport Py_DECREF, Py_INCREF
from libc.stdint cimport int64_t

from cyjob._sync cimport (
    CYJ_CPU_UNKNOWN, cyj_add, cyj_cas, cyj_load, cyj_mark_waking, cyj_now_ns, cyj_publish_cpu,
    cyj_spin_while_equal, cyj_store, cyj_worker_depth,
    cyj_queue_close, cyj_queue_destroy, cyj_queue_init, cyj_queue_pop, cyj_queue_push,
    cyj_queue_try_pop, cyj_thread_switches, cyj_ticket,
)

from cyjob.exceptions import PoolShutdownError

# A waiting worker spins this long before parking on the queue's condition
# variable; a parked wake-up costs ~15 us, and calls of a few tiny tasks
# arrive closer together than that (benchmarks/bench_overhead.py, small calls).
cdef int64_t WORKER_SPIN_NS = 50_000
# A worker that pops a batch whose caller only waits for it spins this long at
# most for that caller to let go of the GIL before it takes it: a thread that
# asks for the GIL while another holds it sleeps on CPython's condition
# variable, and waking it costs tens of microseconds here (one such wake each
# way made a small call 90-100 us instead of ~10: bench_overhead's "calls x
# 10 tiny tasks" with a caller that only waits).
cdef int64_t HANDOFF_SPIN_NS = 20_000
# A worker still running work that its caller abandoned (a call that timed
# out, failed or was closed early) this long after it started that work is
# retired: the pool stops counting it and starts a fresh thread in its place,
# so that the next call gets the workers it asks for.  Threads cannot be
# killed: a retired one leaves when its task returns.  (The grace keeps a
# worker that stops at its next abort check, within ms, from being replaced.)
cdef int64_t STUCK_NS = 20_000_000
#: Retired threads still running tasks, all pools together, at most: beyond
#: that a new call waits for them rather than starting threads without end.
MAX_RETIRED_THREADS = 32
cdef Py_ssize_t _max_retired = MAX_RETIRED_THREADS
cdef Py_ssize_t _n_retired_running = 0
# Pools that may have a worker stuck on abandoned work (see retire_stuck_workers).
cdef list _watched = []


cdef class Work:
    """Something a worker runs: claimed once, by whoever runs it first."""

    def __cinit__(self):
        self.ticket.owner = <void *>self

    @property
    def claimed(self):
        """True once someone runs (or has run) this."""
        return cyj_load(&self.ticket.claimed) != 0

    @claimed.setter
    def claimed(self, bint value):
        # (Unclaiming is for an executor that claimed work for somewhere it
        # cannot go after all, and hands it on: backends/auto.py.)
        cyj_store(&self.ticket.claimed, value)

    cdef int run_in_worker(self) except -1:
        """A worker popped and claimed this (GIL held): run it."""
        raise NotImplementedError

    cdef void skipped_in_worker(self):
        """A worker popped this, already claimed by someone else (GIL held)."""

    cdef int fail(self, object error) except -1:
        """The pool shut down before a worker ran this (claimed, GIL held)."""
        raise NotImplementedError

    cdef bint abandoned(self):
        """True once nobody waits for this any more (its call ended)."""
        return False


cdef class Job(Work):
    """``ThreadPool.submit(fn, callback)``: ``fn()`` run by a worker, then
    ``callback(job)`` in that worker with ``result``, ``error`` and
    ``duration_ns`` set (``error`` None on success)."""

    cdef readonly object fn
    cdef public object callback
    cdef public object result   # public: a reader may drop it once taken
    cdef public object error
    cdef readonly double duration_ns
    cdef ThreadPool pool        # the pool it was given to
    cdef bint given_up          # cancel() was called: nobody waits for it

    def __init__(self, fn, callback=None):
        self.fn = fn
        self.callback = callback

    cdef int run_in_worker(self) except -1:
        cdef int64_t t0 = cyj_now_ns()
        fn, self.fn = self.fn, None
        try:
            self.result = fn()
        except BaseException as exc:
            self.error = exc
        self.duration_ns = <double>(cyj_now_ns() - t0)
        self._report()
        return 0

    cdef int fail(self, object error) except -1:
        self.fn = None
        self.error = error
        self._report()
        return 0

    cdef _report(self):
        callback, self.callback = self.callback, None
        if callback is not None:
            callback(self)

    cdef bint abandoned(self):
        return self.given_up

    def cancel(self):
        """Keep any worker from running this; True if none had started it.
        A worker running it is no longer waited for (see retire_stuck_workers)."""
        self.given_up = True
        if cyj_cas(&self.ticket.claimed, 0, 1):
            self.fn = self.callback = None
            return True
        if self.pool is not None:
            self.pool.watch_abandoned()
        return False


def in_worker_thread():
    """True inside a cyjob thread-pool worker, or while a caller runs a batch
    of its own call (used to run nested calls inline)."""
    return cyj_worker_depth()[0] > 0


cdef void enter_worker() noexcept nogil:
    """This thread runs pool work from now on (a worker, or a caller running
    a batch of its call) until ``leave_worker``."""
    cyj_worker_depth()[0] += 1


cdef void leave_worker() noexcept nogil:
    cyj_worker_depth()[0] -= 1


# Stale queue entries (work someone else ran first) a worker drops in one go
# once it holds the GIL: it skips them without it.
cdef enum:
    STALE_BATCH = 1024


cdef class Worker:
    """One thread of a pool, and what it runs (read by the pool to spot
    workers stuck on abandoned work)."""


def _worker_main(ThreadPool pool, Worker me):
    global _n_retired_running
    cdef void *item
    cdef cyj_ticket *ticket
    cdef void *stale[STALE_BATCH]
    cdef Py_ssize_t n_stale = 0, i
    cdef Work work
    cdef bint in_gil = False
    enter_worker()
    try:
        while True:
            ticket = NULL
            with nogil:
                if in_gil:
                    cyj_add(&pool.n_in_gil, -1)  # (let go of it just now)
                    in_gil = False
                while True:
                    if n_stale > 0:
                        item = cyj_queue_try_pop(&pool.queue)  # flush before parking
                    else:
                        item = cyj_queue_pop(&pool.queue, WORKER_SPIN_NS, &pool.where.caller)
                    if item == NULL:
                        break
                    if cyj_cas(&(<cyj_ticket *>item).claimed, 0, 1):
                        ticket = <cyj_ticket *>item
                        cyj_publish_cpu(&pool.where.runner)
                        # Before waiting for the GIL (a clock read and one
                        # system call, ~0.3 us per batch): a measured batch
                        # counts that wait (_dispatch._execute_claimed).
                        ticket.taken_ns = cyj_now_ns()
                        cyj_thread_switches(&ticket.voluntary, &ticket.involuntary)
                        if ticket.caller_gil_free != NULL:
                            # (The batch, and the call it points to, live
                            # while the queue's reference to it does.)
                            cyj_spin_while_equal(ticket.caller_gil_free, 0, HANDOFF_SPIN_NS,
                                                 &pool.where.caller)
                        break
                    stale[n_stale] = (<cyj_ticket *>item).owner
                    n_stale += 1
                    if n_stale == STALE_BATCH:
                        break
            for i in range(n_stale):  # the queue's references to stale work
                work = <Work>stale[i]
                work.skipped_in_worker()
                Py_DECREF(work)
            n_stale = 0
            work = None
            if ticket == NULL:
                if item == NULL and pool.closed:
                    break
                continue
            cyj_add(&pool.n_in_gil, 1)  # (see Call._park)
            in_gil = True
            work = <Work>ticket.owner
            Py_DECREF(work)  # the queue's reference; `work` holds its own
            if pool.closed:
                # Queued before shutdown() and popped before it drained the
                # queue: it fails (or is dropped at exit) as shutdown() says.
                if not pool.at_exit:
                    work.fail(PoolShutdownError(
                        "the cyjob thread pool was shut down before this batch ran"))
                work = None
                continue
            me.current = work
            me.since = cyj_now_ns()
            try:
                work.run_in_worker()
            finally:
                me.current = None
            work = None
            if me.retired:
                break  # replaced while it ran abandoned work: leave
    finally:
        if in_gil:
            cyj_add(&pool.n_in_gil, -1)
        leave_worker()
        if me.retired:
            _n_retired_running -= 1


cdef class ThreadPool:
    """``n_threads`` worker threads started through ``threading`` (so they
    show up in ``threading.enumerate()`` and work with profilers and
    faulthandler) that wait for work in C without the GIL."""

    def __cinit__(self, *args, **kwargs):
        if cyj_queue_init(&self.queue, 64) != 0:
            raise MemoryError("cannot allocate the cyjob work queue")
        self.queue_ready = True
        self.where.caller = self.where.runner = CYJ_CPU_UNKNOWN

    def __init__(self, Py_ssize_t n_threads, str name="cyjob-worker", start=None):
        if n_threads < 1:
            raise ValueError(f"n_threads must be >= 1, got {n_threads}")
        self.n_threads = n_threads
        self.owner_pid = os.getpid()
        self.name = name
        self.threads = []
        self.workers = []
        try:
            self.start_threads(n_threads if start is None else start)
        except BaseException:
            # Nobody gets this pool: stop the workers it did start, or they
            # would wait for work forever.
            self.shutdown(wait=False)
            raise

    def start_threads(self, Py_ssize_t n=-1):
        """Start threads until ``n`` (default: ``n_threads``) have started.

        A pool made with ``start=0`` starts its threads as its user finds it
        needs them: each start waits for the new thread to run, several ms on
        a loaded machine (the default backend's first call of tiny tasks
        needs one thread, or none, not n_jobs)."""
        if n < 0 or n > self.n_threads:
            n = self.n_threads
        while len(self.threads) < n and not self.closed:
            self._start_worker()

    cdef int _start_worker(self) except -1:
        cdef Worker w = Worker.__new__(Worker)
        w.thread = threading.Thread(target=_worker_main, args=(self, w),
                                    name=f"{self.name}-{self.n_started}", daemon=True)
        self.n_started += 1
        # Counted before it starts: a Ctrl-C while start() waits for the
        # thread must not leave a running worker the pool does not know.
        self.workers.append(w)
        self.threads.append(w.thread)
        try:
            w.thread.start()
        except RuntimeError:
            # The system refused the thread (a limit on threads or memory):
            # it never ran, so the pool must not count it (alive() would stay
            # False, and shutdown would join a thread never started).
            self.workers.pop()
            self.threads.pop()
            raise
        return 0

    cdef int watch_abandoned(self) except -1:
        """A call that ended early had work here: some worker may be stuck
        running it (retire_stuck_workers looks)."""
        if not self.watching and not self.closed:
            self.watching = True
            _watched.append(self)
        return 0

    cdef Py_ssize_t _retire_stuck(self, object log) except -1:
        global _n_retired_running
        cdef Worker w
        cdef Work work
        cdef Py_ssize_t n = 0
        cdef bint pending = False
        cdef int64_t now = cyj_now_ns()
        for w in list(self.workers):
            work = w.current
            if self.closed or work is None or not work.abandoned():
                continue
            if now - w.since < STUCK_NS:
                pending = True
                continue
            if _n_retired_running >= _max_retired:
                pending = True
                if log is not None and not self.bound_said:
                    self.bound_said = True
                    log(f"{_n_retired_running} retired worker threads still run tasks of "
                        f"calls that ended: at the bound ({_max_retired}), waiting for them "
                        "instead of starting more")
                continue
            w.retired = True
            _n_retired_running += 1
            self.workers.remove(w)
            self.threads.remove(w.thread)
            self._start_worker()
            n += 1
        if n and log is not None:
            log(f"retired {n} worker thread(s) still running tasks of a call that ended "
                f"(time-out, error or abandoned) and started {n} fresh one(s); "
                f"{_n_retired_running} retired thread(s) still running")
        if not pending:
            self.watching = False
            self.bound_said = False
            _watched.remove(self)
        return n

    cdef int push(self, Work work, bint defer_wake=False):
        """Queue ``work`` for a worker: 0 if queued, 1 if the pool is closed,
        2 if the queue cannot grow (out of memory), 3 if queued and, with
        ``defer_wake``, a parked worker is still to be woken
        (``cyj_queue_wake``): the caller does that once it has let go of the
        GIL, which that worker would otherwise wake up only to wait for."""
        cdef int rc
        # Workers stuck on work that nobody waits for must not hold this up.
        retire_stuck_workers(None)
        Py_INCREF(work)
        # Pushing keeps the GIL: releasing it would wake threads waiting for
        # it only to make them sleep again.  Safe, as no thread ever waits for
        # the GIL while holding the queue's mutex.
        cyj_publish_cpu(&self.where.caller)
        rc = cyj_queue_push(&self.queue, <void *>&work.ticket, not defer_wake)
        if rc == 0:
            return 0
        if rc == 1:
            if defer_wake:
                return 3
            cyj_mark_waking(&self.where.runner)  # where it will run is not known yet
            return 0
        Py_DECREF(work)
        return 1 if self.closed else 2

    def submit(self, fn, callback=None):
        """Run ``fn()`` in a worker, then ``callback(job)`` there; return the
        ``Job`` (``job.cancel()`` keeps it from running if no worker started
        it).  Closed, the pool runs it in the caller's thread instead."""
        cdef Job job = Job.__new__(Job)
        job.fn = fn
        job.callback = callback
        return self.submit_job(job)

    def submit_job(self, Job job):
        """``submit`` for a ``Job`` made beforehand (whoever must know the job
        before it can run and report)."""
        cdef int rc
        job.pool = self
        rc = self.push(job)
        if rc == 2:
            raise MemoryError("cannot grow the cyjob work queue")
        if rc == 1 and cyj_cas(&job.ticket.claimed, 0, 1):
            job.run_in_worker()
        return job

    def shutdown(self, bint wait=True, timeout=None, bint at_exit=False):
        """Stop the workers.  Work still queued is failed, except at exit:
        then only daemon threads can be waiting for it, and they are about
        to be frozen, so it is just dropped (a failure would print a
        traceback from each of those threads)."""
        cdef void *item
        cdef Work work
        cdef Worker w
        if self.closed:
            return
        self.at_exit = at_exit
        self.closed = True
        with nogil:
            cyj_queue_close(&self.queue)
        while True:
            with nogil:
                item = cyj_queue_try_pop(&self.queue)
            if item == NULL:
                break
            work = <Work>(<cyj_ticket *>item).owner
            Py_DECREF(work)
            if not at_exit and cyj_cas(&work.ticket.claimed, 0, 1):
                work.fail(PoolShutdownError(
                    "the cyjob thread pool was shut down before this batch ran"))
        if self.watching:
            self.watching = False
            _watched.remove(self)
        if wait:
            # One deadline for all; never wait for a worker stuck on work
            # nobody waits for (it may run for hours).
            current = threading.current_thread()
            deadline = None if timeout is None else time.monotonic() + timeout
            for w in list(self.workers):
                if w.thread is current or (w.current is not None and w.current.abandoned()):
                    continue
                w.thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))

    def alive(self):
        """True while every worker thread started is running in this process."""
        return (not self.closed and self.owner_pid == os.getpid()
                and all(t.is_alive() for t in self.threads))

    def __dealloc__(self):
        # After fork() the child inherits the queue's mutex in whatever state
        # a parent thread left it: never touch it there, leak it instead.
        if self.queue_ready and self.owner_pid == os.getpid():
            cyj_queue_destroy(&self.queue)


cdef Py_ssize_t retire_stuck_workers(object log) except -1:
    """Retire the workers stuck on abandoned work in every pool and start
    fresh ones (bounded by MAX_RETIRED_THREADS); ``log(message)`` says so
    (None: quietly).  Return how many were retired.  Called before each batch
    is queued and while a caller waits: costs a test when no pool is watched."""
    cdef ThreadPool pool
    cdef Py_ssize_t n = 0
    if not _watched:
        return 0
    for pool in list(_watched):
        n += pool._retire_stuck(log)
    return n


def _forget_after_fork():
    # The child has none of the parent's threads, retired or not.
    global _n_retired_running
    _watched.clear()
    _n_retired_running = 0


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_after_fork)
