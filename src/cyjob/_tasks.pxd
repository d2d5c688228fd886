from libc.stdint cimport int64_t


cdef class DelayedFunction:
    cdef readonly object func


# Batch-level entry points for the dispatcher (per-task work stays inside).
cdef list private_list(Py_ssize_t n)
cdef list flat_slice(object source, Py_ssize_t start, Py_ssize_t stop)
cdef Py_ssize_t flat_extend(list flat, object iterator, Py_ssize_t n,
                            Py_ssize_t index) except -1
cdef tuple run_flat(list flat, int64_t *abort_flag)
cdef tuple run_read(object iterator, object source, Py_ssize_t start, Py_ssize_t n,
                    object first, int64_t *abort_flag)
