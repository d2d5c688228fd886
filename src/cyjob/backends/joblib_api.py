"""Backends written for joblib's API, run by joblib itself.

Ray (``register_ray()``), joblibspark, dask's old integration and any
subclass of a joblib backend class implement joblib's backend API
(``configure``, ``submit``/``apply_async``, callbacks, nesting...).  Code that
registers one with ``joblib.register_parallel_backend`` (or with cyjob's) and
selects it, by ``backend=`` or ``parallel_config``, runs unchanged under
``cyjob.Parallel``: the call is handed to ``joblib.Parallel`` with the same
parameters, so the backend is driven exactly as joblib drives it.  This is
how code written with cyjob reaches Ray or Spark clusters.

joblib is never imported here: a joblib backend object can only exist, and a
name can only be registered with joblib, once the program has imported joblib
itself, so ``sys.modules`` tells.
"""

import sys

from cyjob.backends.base import Backend

__all__ = ["JoblibAPIBackend", "is_joblib_backend", "joblib_factory"]


def is_joblib_backend(obj):
    """True for an instance of joblib's ``ParallelBackendBase`` (or a subclass)."""
    module = sys.modules.get("joblib._parallel_backends")
    return module is not None and isinstance(obj, module.ParallelBackendBase)


def joblib_factory(name):
    """The factory registered with joblib under ``name``, if joblib is loaded."""
    module = sys.modules.get("joblib.parallel")
    if module is None:
        return None
    return module.BACKENDS.get(name)


class JoblibAPIBackend(Backend):
    """A joblib backend instance; ``cyjob.Parallel`` hands its calls to
    ``joblib.Parallel``.

    Parameters
    ----------
    backend : joblib.parallel.ParallelBackendBase
        The backend object, used as is (joblib configures it per call).
    call_kwargs : dict, optional
        Passed to ``joblib.Parallel`` (which hands them to the backend's
        ``configure``), as ``Parallel(backend=instance, **kwargs)`` does.
    """

    in_process = False

    def __init__(self, backend, call_kwargs=None):
        super().__init__()
        self.backend = backend
        self.call_kwargs = call_kwargs or {}
        self.name = type(backend).__name__
        self.supports_sharedmem = bool(getattr(backend, "supports_sharedmem", False))
        self.default_n_jobs = getattr(backend, "default_n_jobs", 1)

    def effective_n_jobs(self, n_jobs):
        # joblib asks the backend at call time; here only n_jobs == 0 fails
        # early, as it does for every cyjob backend.
        return super().effective_n_jobs(n_jobs)

    def executor(self, n_workers, parallel=None):
        raise RuntimeError("a joblib backend runs its calls through joblib.Parallel")

    def joblib_parallel(self, parallel):
        """The ``joblib.Parallel`` that runs ``parallel``'s calls; its progress
        messages go through ``parallel._print``."""
        runner = _runner_class()(
            n_jobs=parallel.n_jobs, backend=self.backend, return_as=parallel.return_as,
            verbose=parallel.verbose, timeout=parallel.timeout,
            pre_dispatch=parallel.pre_dispatch, batch_size=parallel.batch_size,
            temp_folder=parallel.temp_folder, max_nbytes=parallel.max_nbytes,
            mmap_mode=parallel.mmap_mode, **self.call_kwargs)
        runner.cyjob_parallel = parallel
        return runner

    def __repr__(self):
        return f"JoblibAPIBackend({self.backend!r})"


_RUNNER = None


def _runner_class():
    """``joblib.Parallel``, printing through the cyjob ``Parallel`` it runs for."""
    global _RUNNER
    if _RUNNER is None:
        import joblib

        class JoblibRunner(joblib.Parallel):
            cyjob_parallel = None

            def _print(self, msg):
                self.cyjob_parallel._print(msg)

        _RUNNER = JoblibRunner
    return _RUNNER
