"""Tasks: ``delayed``, the checks that turn any task into ``(f, args, kwargs)``,
flat batches, and the loop that runs one batch.

Everything here that runs once per task stays inside this module: the
dispatcher (``_dispatch``) asks for a whole batch at a time (``flat_slice``,
``flat_extend``, ``run_flat``), so splitting the core into modules costs a
cross-module call per batch, never per task.
"""

import itertools
import sys
from collections.abc import Mapping

from cpython.exc cimport PyErr_CheckSignals
from cpython.object cimport PyObject
from libc.stdint cimport int64_t

from cyjob._sync cimport cyj_load, cyj_now_ns

cdef extern from "Python.h":
    object PyObject_Call(object callable, object args, PyObject *kwargs)
    Py_ssize_t PyDict_GET_SIZE(object d)
    bint PyObject_IS_GC(object o)
    int PyObject_GC_IsTracked(object o)
    void PyObject_GC_UnTrack(void *o)

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


cdef list private_list(Py_ssize_t n):
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


cdef list flat_slice(object source, Py_ssize_t start, Py_ssize_t stop):
    """The flat batch of tasks ``source[start:stop]`` (a list or tuple)."""
    cdef list flat = private_list(0)
    cdef Py_ssize_t i
    for i in range(start, stop):
        _append_task(flat, source[i], i)
    return flat


cdef Py_ssize_t flat_extend(list flat, object iterator, Py_ssize_t n,
                            Py_ssize_t index) except -1:
    """Append up to ``n`` tasks read from ``iterator`` to ``flat`` (the first
    one is task ``index`` of the call); return how many were read."""
    cdef Py_ssize_t got = 0
    for task in _islice(iterator, n):
        _append_task(flat, task, index + got)
        got += 1
    return got


# --------------------------------------------------------------------------
# running tasks

cdef int64_t _switch_interval_ns = <int64_t>(sys.getswitchinterval() * 1e9)


cdef inline object _call(object func, object args, object kwargs):
    """``func(*args, **kwargs)``, an empty ``kwargs`` not passed on."""
    if PyDict_GET_SIZE(kwargs) == 0:
        return PyObject_Call(func, args, NULL)
    return PyObject_Call(func, args, <PyObject *>kwargs)


cdef object _between_tasks(int64_t *last_yield):
    """Called every YIELD_CHECK_EVERY tasks of a batch: once per switch
    interval, give the GIL up, and take a Ctrl-C received meanwhile; return
    its exception (else None).

    Calling C-implemented functions from compiled code never passes through
    the eval loop, so nothing would ever offer the GIL to other threads, nor
    raise a Ctrl-C in the caller's thread until such a batch ends: both are
    done here, between tasks (the signal check is a no-op in other threads).
    """
    cdef int64_t now = cyj_now_ns()
    if now - last_yield[0] < _switch_interval_ns:
        return None
    with nogil:
        pass
    last_yield[0] = now
    try:
        PyErr_CheckSignals()
    except BaseException as exc:
        return exc
    return None


cdef tuple run_flat(list flat, int64_t *abort_flag):
    """Run a flat batch in order with the GIL held; return (results, error)."""
    cdef Py_ssize_t i, n = len(flat) // 3
    cdef list results = private_list(n)
    cdef object error
    cdef int64_t last_yield = cyj_now_ns()
    for i in range(n):
        # An aborted call's batch stops before its next task (an atomic load,
        # ~1 ns against a task's >= 50 ns): a batch of long tasks checked only
        # every YIELD_CHECK_EVERY tasks ran on for seconds after a Ctrl-C or
        # an error, taking CPU from the next call.
        if abort_flag != NULL and cyj_load(abort_flag):
            return None, None
        if (i % YIELD_CHECK_EVERY) == YIELD_CHECK_EVERY - 1:
            error = _between_tasks(&last_yield)
            if error is not None:
                return None, error
        try:
            results[i] = _call(flat[3 * i], flat[3 * i + 1], flat[3 * i + 2])
        except BaseException as exc:
            return None, exc
    return results, None


cdef object _END = object()


cdef tuple run_read(object iterator, object source, Py_ssize_t start, Py_ssize_t n,
                    object first, int64_t *abort_flag):
    """Read up to ``n`` tasks and run each as soon as it is read, in the
    caller's thread (a batch run inline): from ``source[start:]`` (a list or
    tuple), else from ``iterator`` after ``first`` (read already).

    Return ``(results, error, input_error, n_read, exhausted)``: the results
    of the tasks run (None if a task failed, with ``error``), the exception
    the input raised or the malformed task's TypeError (``input_error``; the
    tasks read before it ran), how many tasks were read, and whether the
    iterator ended.

    A flat batch (run_flat) keeps a batch's tasks alive until it has read
    them all; here each task's tuples die before the next is read, as in a
    list comprehension, and their memory is reused at once (100k tiny tasks
    from a generator, run inline: 0.94x the list comprehension's time; 1.06x
    read into flat batches of 512 first).
    """
    cdef Py_ssize_t i
    cdef list results = private_list(n)
    cdef object task = first, error
    cdef int64_t last_yield = cyj_now_ns()
    for i in range(n):
        if abort_flag != NULL and cyj_load(abort_flag):
            return None, None, None, i, False
        if (i % YIELD_CHECK_EVERY) == YIELD_CHECK_EVERY - 1:
            error = _between_tasks(&last_yield)
            if error is not None:
                return None, error, None, i, False
        try:
            if source is not None:
                task = source[start + i]
            elif i > 0:
                task = next(iterator, _END)
                if task is _END:
                    del results[i:]
                    return results, None, None, i, True
            if not _is_clean_task(task):
                task = _coerce_task(task, start + i)
        except BaseException as exc:
            del results[i:]
            return results, None, exc, i, False
        try:
            results[i] = _call((<tuple>task)[0], (<tuple>task)[1], (<tuple>task)[2])
        except BaseException as exc:
            return None, exc, None, i + 1, False
    return results, None, None, n, False


def run_tasks(list flat):
    """Run a flat batch; return ``(results, error, duration_ns)``.

    Used by out-of-process workers; exactly what a thread worker does.
    """
    cdef int64_t t0 = cyj_now_ns()
    results, error = run_flat(flat, NULL)
    return results, error, <double>(cyj_now_ns() - t0)
