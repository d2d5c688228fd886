from libc.stdint cimport int64_t
from cyjob._sync cimport cyj_queue, cyj_ticket, cyj_whereabouts


cdef class Work:
    # Claimed (0 -> 1) by whoever runs it first; a pool's queue holds &ticket.
    cdef cyj_ticket ticket
    cdef int run_in_worker(self) except -1
    cdef void skipped_in_worker(self)
    cdef int fail(self, object error) except -1
    cdef bint abandoned(self)


cdef class Worker:
    cdef readonly object thread
    cdef Work current          # what it runs now (GIL held to change it)
    cdef int64_t since         # monotonic ns when it started `current`
    cdef bint retired          # leaves once `current` returns


cdef class ThreadPool:
    cdef cyj_queue queue
    cdef bint queue_ready
    cdef readonly list threads
    cdef readonly Py_ssize_t n_threads
    cdef readonly bint closed
    cdef bint at_exit          # shut down by the interpreter's exit
    cdef readonly long owner_pid
    cdef list workers          # the live, not retired workers
    cdef bint watching         # some worker may be stuck on abandoned work
    cdef bint bound_said       # the bound on retired threads was reported
    cdef str name
    cdef Py_ssize_t n_started
    cdef int64_t n_in_gil      # workers holding the GIL to run a batch
    cdef cyj_whereabouts where # the CPUs of the callers and workers that spin
    cdef int push(self, Work work, bint defer_wake=*)
    cdef int _start_worker(self) except -1
    cdef Py_ssize_t _retire_stuck(self, object log) except -1
    cdef int watch_abandoned(self) except -1


cdef Py_ssize_t retire_stuck_workers(object log) except -1
cdef void enter_worker() noexcept nogil
cdef void leave_worker() noexcept nogil
