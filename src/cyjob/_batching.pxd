cdef class BatchSizer:
    cdef readonly Py_ssize_t n_workers
    cdef readonly Py_ssize_t fixed_size
    cdef readonly Py_ssize_t max_size
    cdef readonly double target_ns
    cdef readonly double min_batch_ns
    cdef readonly double ns_per_task
    cdef readonly double work_ns
    cdef readonly Py_ssize_t n_observed
    cdef readonly Py_ssize_t n_tasks      # tasks in the batches observed
    cdef readonly Py_ssize_t last_size

    cpdef void expect(self, double ns_per_task)
    cpdef Py_ssize_t small_call_size(self, double ns_per_task)
    cpdef void observe(self, Py_ssize_t size, double duration_ns)
    cpdef Py_ssize_t next_size(self, Py_ssize_t remaining)
