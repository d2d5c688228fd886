"""What a task sent to a worker process takes along from the caller's thread.

Threads share the caller's process state; a worker process does not.  A
task run there must still see:

* the caller's **warning filters** (``warnings.filterwarnings("ignore", ...)``
  around a call must silence the tasks' warnings too);
* **scikit-learn's config** (``sklearn.set_config`` / ``config_context``:
  ``assume_finite``, ``working_memory``, ``transform_output``...), when
  scikit-learn is loaded in the caller (it is never imported for this);
* a **cap on BLAS/OpenMP threads**, so that n workers each running an
  n-threaded BLAS do not oversubscribe the CPUs.  The pool already sets the
  ``OMP_NUM_THREADS``-style variables in each worker's environment (libraries
  loaded after it starts read them); ``threadpoolctl``, when installed (it
  is a scikit-learn dependency), also limits the ones already loaded.

:func:`capture` reads these in the caller; the :class:`InCallerContext` it
makes wraps a callable and pickles with it.  This module imports nothing
heavy: workers unpickle it before every batch.
"""

import sys
import warnings

__all__ = ["capture", "InCallerContext"]

_capped_at = None  # the thread limit threadpoolctl last applied in this worker


def capture(n_threads):
    """Read this thread's warning filters and scikit-learn config now; the
    returned ``wrap(function)`` makes ``function`` (called with no
    arguments) run in a worker process under them, with BLAS/OpenMP capped
    at ``n_threads`` threads.  (Read once, in the thread that makes the
    call: scikit-learn's config is per thread, and later batches may be
    dispatched from a worker thread.)"""
    sklearn_config = None
    sklearn = sys.modules.get("sklearn")
    if sklearn is not None:
        try:
            sklearn_config = sklearn.get_config()
        except Exception:  # a half-imported or unusual sklearn: nothing to carry
            sklearn_config = None
    filters = list(warnings.filters)

    def wrap(function):
        return InCallerContext(function, filters, sklearn_config, n_threads)
    return wrap


def _cap_threads(n_threads):
    global _capped_at
    if n_threads is None or _capped_at == n_threads:
        return
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        _capped_at = n_threads  # the environment variables are all there is
        return
    threadpool_limits(limits=n_threads)
    _capped_at = n_threads


class InCallerContext:
    """``function()`` run under the caller's warning filters and
    scikit-learn config, with BLAS/OpenMP capped (see :func:`capture`)."""

    __slots__ = ("function", "filters", "sklearn_config", "n_threads")

    def __init__(self, function, filters, sklearn_config, n_threads):
        self.function = function
        self.filters = filters
        self.sklearn_config = sklearn_config
        self.n_threads = n_threads

    def __call__(self):
        _cap_threads(self.n_threads)
        with warnings.catch_warnings():
            warnings.filters[:] = self.filters
            mutated = getattr(warnings, "_filters_mutated", None)
            if mutated is not None:
                mutated()  # drop the per-module "already warned" caches
            if self.sklearn_config is None:
                return self.function()
            import sklearn

            with sklearn.config_context(**self.sklearn_config):
                return self.function()

    def __len__(self):
        return len(self.function)

    def __reduce__(self):
        return (InCallerContext,
                (self.function, self.filters, self.sklearn_config, self.n_threads))
