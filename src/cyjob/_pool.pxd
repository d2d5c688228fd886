from cyjob._sync cimport cyj_queue, cyj_ticket


cdef class Work:
    # Claimed (0 -> 1) by whoever runs it first; a pool's queue holds &ticket.
    cdef cyj_ticket ticket
    cdef int run_in_worker(self) except -1
    cdef void skipped_in_worker(self)
    cdef int fail(self, object error) except -1


cdef class ThreadPool:
    cdef cyj_queue queue
    cdef bint queue_ready
    cdef readonly list threads
    cdef readonly Py_ssize_t n_threads
    cdef readonly bint closed
    cdef readonly long owner_pid
    cdef int push(self, Work work)
