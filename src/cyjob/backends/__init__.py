"""Backends by name: where batches run.

joblib's names are accepted: "threading", "sequential", and the process
backends "loky", "multiprocessing" (plus cyjob's "processes").  With none
given, "auto" measures the first batches and picks (backends/auto.py).
"""

from cyjob.backends.auto import AutoBackend
from cyjob.backends.base import Backend
from cyjob.backends.sequential import SequentialBackend
from cyjob.backends.threads import ThreadingBackend

PROCESS_BACKEND_NAMES = ("loky", "multiprocessing", "processes")


def _dask_backend(**backend_params):
    # Imported on first use: cyjob does not need dask installed.
    from cyjob.backends.dask import DaskBackend

    return DaskBackend(**backend_params)


def _process_backend(**backend_params):
    # Imported on first use: `import cyjob` stays light for thread users.
    from cyjob.backends.processes import ProcessBackend

    return ProcessBackend(**backend_params)


BACKENDS = {
    "auto": AutoBackend,
    "threading": ThreadingBackend,
    "sequential": SequentialBackend,
    "dask": _dask_backend,
    **{name: _process_backend for name in PROCESS_BACKEND_NAMES},
}

_default_backend = ["auto"]
# Bumped by every registration: what a backend name means may have changed.
registry_version = 0
# Built-in backends hold no state: one instance each serves every call.
_SHARED = {cls.name: cls() for cls in (AutoBackend, ThreadingBackend, SequentialBackend)}


def register_parallel_backend(name, factory, make_default=False):
    """Make ``backend=name`` build its backend with ``factory(**backend_params)``.

    Parameters
    ----------
    name : str
    factory : callable
        Returns a :class:`cyjob.backends.base.Backend` instance, or an
        instance of a backend written for joblib's API (joblib runs the calls
        that select it).
    make_default : bool, default=False
        Use this backend when ``Parallel`` is given none.
    """
    if not isinstance(name, str) or not name:
        raise TypeError(f"name must be a non-empty string, got {name!r}")
    if not callable(factory):
        raise TypeError(f"factory must be callable, got {type(factory).__name__}")
    global registry_version
    BACKENDS[name] = factory
    registry_version += 1  # Parallel's cache of checked settings is stale
    if make_default:
        _default_backend[0] = name


def shared_backend(name):
    """The one instance of a stateless built-in backend, or None."""
    return _SHARED.get(name)


def default_backend_name():
    return _default_backend[0]


def _multiprocessing_context(backend):
    """True for a ``multiprocessing`` context object (``mp.get_context("spawn")``),
    which joblib accepts as ``backend``: its multiprocessing backend."""
    import multiprocessing.context

    return isinstance(backend, multiprocessing.context.BaseContext)


def check_backend(backend):
    """ValueError/TypeError now for what ``get_backend`` could never resolve
    (``parallel_config`` checks its backend without building it)."""
    from cyjob.backends.joblib_api import is_joblib_backend, joblib_factory

    if isinstance(backend, Backend) or is_joblib_backend(backend) or _multiprocessing_context(backend):
        return
    if not isinstance(backend, str):
        raise TypeError(f"backend must be a string or a cyjob Backend, got {type(backend).__name__}")
    if backend not in BACKENDS and joblib_factory(backend) is None:
        raise ValueError(f"Invalid backend: {backend!r}, expected one of {sorted(BACKENDS)}")


def get_backend(backend, **backend_params):
    """A Backend instance for a name or an instance; ValueError if unknown.

    Names registered with cyjob come first, then names registered with joblib
    (when the program has imported it); a backend written for joblib's API is
    wrapped in a ``JoblibAPIBackend``, whose calls joblib runs.
    """
    if isinstance(backend, Backend):
        return backend
    if not isinstance(backend, str):
        from cyjob.backends.joblib_api import JoblibAPIBackend, is_joblib_backend

        if is_joblib_backend(backend):
            return JoblibAPIBackend(backend, backend_params)
        if _multiprocessing_context(backend):
            return get_backend("multiprocessing", **backend_params)
        raise TypeError(f"backend must be a string or a cyjob Backend, got {type(backend).__name__}")
    if not backend_params:
        shared = _SHARED.get(backend)
        if shared is not None and BACKENDS.get(backend) is type(shared):
            return shared
    factory = BACKENDS.get(backend)
    if factory is None:
        from cyjob.backends.joblib_api import joblib_factory

        factory = joblib_factory(backend)
        if factory is None:
            raise ValueError(f"Invalid backend: {backend!r}, expected one of "
                             f"{sorted(BACKENDS)}")
    instance = factory(**backend_params)
    if not isinstance(instance, Backend):
        from cyjob.backends.joblib_api import JoblibAPIBackend, is_joblib_backend

        if is_joblib_backend(instance):
            return JoblibAPIBackend(instance)
        raise TypeError(f"the factory registered for backend {backend!r} returned "
                        f"{type(instance).__name__}, not a cyjob Backend nor a joblib backend")
    return instance
