"""Backends by name: where batches run.

joblib's names are accepted: "threading", "sequential", and the process
backends "loky", "multiprocessing" (plus cyjob's "processes").  With none
given, "auto" measures the first batches and picks (backends/auto.py).

The registry holds factories and imports no backend: a built-in one is
imported the first time its name is asked for (dask need not be installed,
and `import cyjob` stays light for thread users).
"""

import importlib
import threading

from cyjob.backends.base import Backend

PROCESS_BACKEND_NAMES = ("loky", "multiprocessing", "processes")


class _Lazy:
    """The factory at ``"module:name"``, imported on its first call."""

    __slots__ = ("path", "_factory")

    def __init__(self, path):
        self.path = path
        self._factory = None

    def load(self):
        if self._factory is None:
            module, _, name = self.path.partition(":")
            self._factory = getattr(importlib.import_module(module), name)
        return self._factory

    def __call__(self, **backend_params):
        return self.load()(**backend_params)

    def __repr__(self):
        return f"<backend factory {self.path}>"


_BUILTIN = {
    "auto": _Lazy("cyjob.backends.auto:AutoBackend"),
    "threading": _Lazy("cyjob.backends.threads:ThreadingBackend"),
    "sequential": _Lazy("cyjob.backends.sequential:SequentialBackend"),
    "dask": _Lazy("cyjob.backends.dask:DaskBackend"),
    **dict.fromkeys(PROCESS_BACKEND_NAMES, _Lazy("cyjob.backends.processes:ProcessBackend")),
}
BACKENDS = dict(_BUILTIN)

# Built-in backends that hold no state: one instance each serves every call.
_STATELESS = ("auto", "threading", "sequential")
_SHARED: "dict[str, Backend]" = {}
_shared_lock = threading.Lock()

_default_backend = ["auto"]
# Bumped by every registration: what a backend name means may have changed.
registry_version = 0


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


def _not_a_backend(backend):
    # A ValueError, as joblib raises for any backend it cannot resolve
    # (Parallel(backend=3)): callers catch that one.
    return ValueError(f"Invalid backend: {backend!r} (a {type(backend).__name__}), expected a "
                      f"name, one of {sorted(BACKENDS)}, or a backend instance")


def check_backend(backend):
    """ValueError/TypeError now for what ``get_backend`` could never resolve
    (``parallel_config`` checks its backend without building it)."""
    from cyjob.backends.joblib_api import is_joblib_backend, joblib_factory

    if isinstance(backend, Backend) or is_joblib_backend(backend) or _multiprocessing_context(backend):
        return
    if not isinstance(backend, str):
        raise _not_a_backend(backend)
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
        raise _not_a_backend(backend)
    factory = BACKENDS.get(backend)
    if factory is None:
        from cyjob.backends.joblib_api import joblib_factory

        factory = joblib_factory(backend)
        if factory is None:
            raise ValueError(f"Invalid backend: {backend!r}, expected one of "
                             f"{sorted(BACKENDS)}")
    if not backend_params and backend in _STATELESS and factory is _BUILTIN[backend]:
        shared = _SHARED.get(backend)
        if shared is None:
            with _shared_lock:
                shared = _SHARED.get(backend)
                if shared is None:
                    shared = _SHARED[backend] = factory()
        return shared
    instance = factory(**backend_params)
    if not isinstance(instance, Backend):
        from cyjob.backends.joblib_api import JoblibAPIBackend, is_joblib_backend

        if is_joblib_backend(instance):
            return JoblibAPIBackend(instance)
        raise TypeError(f"the factory registered for backend {backend!r} returned "
                        f"{type(instance).__name__}, not a cyjob Backend nor a joblib backend")
    return instance
