"""Per-thread caps on OpenMP threads, for work run on worker threads.

n worker threads that each start an n-threaded OpenMP region (scikit-learn's
HistGradientBoosting, its pairwise-distance reductions) oversubscribe the
CPUs: on 2 CPUs, 4 threads spin at OpenMP's barriers, and a loaded machine
makes that 2-3x slower than one thread per worker (issue 15).  joblib's
loky caps its worker *processes* through environment variables; its
threading backend caps nothing.

OpenMP's threads can be capped one thread at a time: their number is an
internal control variable of the calling thread, so ``omp_set_num_threads``
in a worker thread sizes only the parallel regions that thread starts (and
scikit-learn reads it back through ``omp_get_max_threads`` to size its own
loops); the caller's thread and other threads keep theirs.  OpenBLAS's
limit is process-wide (even ``openblas_set_num_threads_local``, measured in
the scipy-openblas 0.3.30/0.3.31 builds here, sets it for every thread), so
it is left alone: capping it from a worker would cap the caller too.

:func:`capped` wraps a batch so that it runs under such a cap and restores
the thread's previous limit afterwards (the thread pool is shared with
``cyjob.Parallel``).  The OpenMP runtimes are found with threadpoolctl (a
scikit-learn dependency; without it nothing is capped), once, and again
only when modules were imported since (a scan costs ~2 ms; a capped batch
well under 1 us per runtime).
"""

import ctypes
import sys
import threading

__all__ = ["capped", "runtimes"]

_lock = threading.Lock()
_found = ()           # the OpenMP runtimes' (limit, restore) pairs
_found_for = -1       # len(sys.modules) when they were found


def _openmp(path):
    # A CDLL of our own (the library is loaded already: dlopen just finds
    # it), so that typing its functions leaves threadpoolctl's alone.
    dynlib = ctypes.CDLL(path)
    get, set_ = dynlib.omp_get_max_threads, dynlib.omp_set_num_threads
    get.restype, get.argtypes = ctypes.c_int, []
    set_.restype, set_.argtypes = None, [ctypes.c_int]

    def limit(n):
        previous = get()
        if previous > n:
            set_(n)
            return previous
        return None

    return limit, set_


def _scan():
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:
        return ()
    try:
        libraries = ThreadpoolController().lib_controllers
    except Exception:  # an unusual platform threadpoolctl cannot inspect
        return ()
    found, seen = [], set()
    for lib in libraries:
        if lib.filepath in seen:
            continue
        seen.add(lib.filepath)
        if lib.user_api != "openmp":
            continue
        try:
            found.append(_openmp(lib.filepath))
        except (AttributeError, OSError):  # a runtime without the symbols
            continue
    return tuple(found)


def runtimes():
    """The loaded OpenMP runtimes, as (limit, restore) function pairs."""
    global _found, _found_for
    n_modules = len(sys.modules)
    if n_modules != _found_for:
        with _lock:
            if n_modules != _found_for:
                _found = _scan()
                _found_for = n_modules
    return _found


class Capped:
    """``function()`` run with at most ``n_threads`` OpenMP threads in the
    parallel regions the calling thread starts; its limit is restored after."""

    __slots__ = ("function", "n_threads", "runtimes")

    def __init__(self, function, n_threads, runtimes):
        self.function = function
        self.n_threads = n_threads
        self.runtimes = runtimes

    def __call__(self):
        n = self.n_threads
        restore = [(back, limit(n)) for limit, back in self.runtimes]
        try:
            return self.function()
        finally:
            for back, previous in restore:
                if previous is not None:
                    back(previous)

    def __len__(self):
        return len(self.function)


def capped(function, n_threads, found=None):
    """``function`` wrapped to run under a per-thread cap of ``n_threads``
    (``function`` itself when there is nothing to cap)."""
    found = runtimes() if found is None else found
    if not found or n_threads is None:
        return function
    return Capped(function, n_threads, found)
