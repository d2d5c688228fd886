from libc.stdint cimport int64_t
from cyjob._sync cimport cyj_monitor, cyj_queue, cyj_whereabouts
from cyjob._batching cimport BatchSizer
from cyjob._pool cimport ThreadPool, Work


cdef class Batch(Work):
    cdef readonly Call call
    cdef readonly list tasks
    cdef readonly Py_ssize_t start
    cdef readonly Py_ssize_t size
    cdef readonly list results
    cdef readonly object error
    cdef readonly bint done
    cdef readonly double duration_ns
    # Where it ran in this process: monotonic start and end, the CPU time of
    # the thread that ran it, and that thread's voluntary / involuntary
    # context switches meanwhile (how the auto backend tells waiting for the
    # GIL from a CPU taken by other programs; backends/_probe.py).
    cdef readonly int64_t started_ns
    cdef readonly int64_t finished_ns
    cdef readonly int64_t cpu_ns
    cdef readonly int64_t voluntary
    cdef readonly int64_t involuntary
    # A pool worker's wait for the GIL before started_ns (measured calls).
    cdef readonly int64_t waited_ns


cdef class Executor:
    cdef readonly Py_ssize_t n_workers
    cdef readonly bint caller_helps
    cpdef submit(self, Batch batch)
    cpdef call_started(self, Call call, object first_function)
    cpdef call_finished(self, Call call)
    cpdef hand_over(self, Batch batch)


cdef class Router(Executor):
    cdef readonly Executor first       # runs batches until a target is chosen
    cdef readonly Executor target      # None until chosen
    cdef readonly bint out_of_process  # the target runs batches elsewhere
    cdef readonly bint target_reads    # an inline target reads a lazy input as it runs
    cdef readonly bint watch_before    # call watch(batch) before routing a batch
    cdef readonly bint watch_end       # call ended(call) when the call ends
    cdef Py_ssize_t unwatched          # batches still to route without watch()
    cdef readonly Call call            # set at the first batch
    # check_cost: the expected cost of the next check_tasks tasks (0: none)
    cdef BatchSizer check_sizer
    cdef BatchSizer check_then
    cdef Py_ssize_t check_tasks
    cdef Py_ssize_t check_from_tasks
    cdef double check_from_ns
    cdef double check_ns
    cdef double check_lowest
    cdef double check_highest
    cdef int _check_cost(self) except -1


cdef class ThreadExecutor(Executor):
    cdef readonly ThreadPool pool
    cdef readonly ThreadExecutor full  # n_workers threads, when the caller helps
    cdef int _push(self, Batch batch) except -1


cdef class Call:
    # Read by workers (with the GIL) between tasks; an int64 so it can be
    # read atomically from C as well.
    cdef int64_t aborted
    # Completion events: bumped by whoever finishes a batch, waited on by
    # the caller with the GIL released.
    cdef int64_t n_events
    cdef int64_t caller_waiting
    # GIL hand-offs with pool workers (see _park and _pool.HANDOFF_SPIN_NS):
    # nonzero while the caller, only waiting, has let go of the GIL; and the
    # count of the pool's workers holding the GIL (NULL: not a thread pool).
    cdef int64_t gil_free
    cdef int64_t *pool_in_gil
    # The thread pool's whereabouts of its callers and workers (NULL: not a
    # thread pool): the caller publishes where it runs, and spins only
    # while the worker it waits for runs on another CPU.
    cdef cyj_whereabouts *where
    # Its last batch was queued with the wake-up of a parked worker put off
    # until the caller lets go of the GIL (see _park); NULL when none is owed.
    cdef cyj_queue *wake_owed
    cdef bint only_waits      # a list call on threads whose caller runs no batch
    cdef int64_t lost_seen    # Ctrl-C lost in the main thread so far (-1: not the main thread)
    cdef cyj_monitor monitor
    cdef bint monitor_ready

    cdef readonly Executor executor
    cdef readonly BatchSizer sizer
    cdef readonly bint ordered
    cdef readonly double timeout
    cdef readonly object error
    cdef object progress
    cdef public object log    # log(message) for verbose notes (the pool's), or None
    cdef double slowest_task_ns  # the slowest batch's time per task
    cdef object task_key      # its first task's function, as _task_key says
    cdef double known_ns      # time per task of a recent call of it, or -1

    # Input: a sequence sliced in place, or an iterator read into `ahead`.
    cdef object source
    cdef object iterator
    cdef list ahead
    cdef Py_ssize_t ahead_pos
    # A batch that reads as it runs: its first task (read when it was cut),
    # and what the input raised meanwhile (raised once the batch is done).
    cdef object first_read
    cdef object input_error
    cdef readonly Py_ssize_t n_total       # -1 while unknown
    cdef readonly Py_ssize_t n_taken

    cdef readonly Py_ssize_t window
    cdef readonly Py_ssize_t n_dispatched_batches
    cdef readonly Py_ssize_t n_done_batches
    cdef readonly Py_ssize_t n_returned_batches
    cdef readonly Py_ssize_t n_completed_tasks
    cdef object pending       # deque of dispatched batches, input order
    cdef object completed     # deque of finished batches, completion order
    cdef object unclaimed     # dispatched batches the caller may run itself
    cdef readonly bint caller_helps  # the caller runs batches while it waits
    cdef public bint measure_cpu  # record each batch's thread CPU time
    cdef Py_ssize_t ahead_limit  # batches dispatched and not handed back, at most
    cdef Py_ssize_t n_queued  # batches of this call in a pool's C queue
    cdef bint caller_running  # the caller is running one of its batches
    cdef bint filling         # inside _fill (guards the input against re-entry)
    cdef bint started         # the executor has been told (call_started)
    cdef readonly bint finished

    cdef int _pull(self, Py_ssize_t wanted) except -1
    cdef Py_ssize_t _remaining(self)
    cdef list _take(self, Py_ssize_t size)
    cdef object _first_function(self)
    cdef int _dispatch(self) except -1
    cdef int _fill(self) except -1
    cdef bint _reads_as_it_runs(self)
    cdef Py_ssize_t _start_read(self, Py_ssize_t size) except -1
    cdef tuple _run_read(self, Batch batch)
    cdef int _size_small_call(self) except -1
    cdef Batch _claim(self)
    cdef bint _caller_may_run(self)
    cdef bint _caller_runs_one(self) except -1
    cdef int _wait(self, int64_t seen, int64_t deadline) except -1
    cdef bint _park(self, int64_t seen, int64_t deadline) noexcept nogil
    cdef void _pay_wake(self) noexcept nogil
    cdef bint _sleep(self, int64_t seen, int64_t deadline) noexcept nogil
    cdef void _notify(self) noexcept nogil
    cpdef batch_done(self, Batch batch, list results, object error, double duration_ns)
    cpdef Batch next_batch(self)
    cdef void _report(self) except *
    cdef void _release(self)
    cpdef void abort(self)


cdef void _execute(Batch batch)
cdef void _execute_claimed(Batch batch)
