"""parallel_config / parallel_backend, cpu_count and effective_n_jobs (joblib's meaning)."""

import threading

from cyjob import _validation as check
from cyjob._cpus import cpu_count, n_workers
from cyjob.backends import check_backend

__all__ = ["parallel_config", "parallel_backend", "cpu_count", "effective_n_jobs"]


class _Default:
    """Marks a parameter the user did not pass, so the active config can fill it."""

    __slots__ = ("value",)

    def __init__(self, value):
        self.value = value

    def __repr__(self):
        return f"default({self.value!r})"


def default(value):
    return _Default(value)


def is_default(value):
    return type(value) is _Default


DEFAULTS = {
    "backend": None,
    "n_jobs": None,
    "verbose": 0,
    "temp_folder": None,
    "max_nbytes": "1M",
    "mmap_mode": "r",
    "prefer": None,
    "require": None,
    "inner_max_num_threads": None,
    "backend_params": {},
}

class _ThreadConfig(threading.local):
    # A class attribute, so that a thread that never set a config reads the
    # defaults without the AttributeError a getattr default costs (~0.7 us,
    # and every Parallel() reads the config).
    config = DEFAULTS


_local = _ThreadConfig()


def get_config():
    """The config active in this thread (a dict; do not mutate)."""
    return _local.config


class parallel_config:
    """Set the defaults of ``Parallel`` in a ``with`` block (or until
    ``unregister()``), like ``joblib.parallel_config``.

    Parameters
    ----------
    backend : str or Backend, optional
        "threading", "sequential", "loky"/"multiprocessing"/"processes", or a
        registered name.
    n_jobs, verbose, temp_folder, max_nbytes, mmap_mode, prefer, require
        Defaults for the ``Parallel`` parameters of the same names.
    inner_max_num_threads : int, optional
        Thread limit for BLAS/OpenMP in process workers.
    **backend_params
        Passed to the backend's constructor.

    Notes
    -----
    Libraries that call joblib (scikit-learn...) do not read this config:
    joblib reads its own.  Through cyjob's joblib backend (see
    ``cyjob.register_joblib_backend``) it reaches their calls for what
    joblib leaves open: ``n_jobs`` (when neither the call nor
    ``joblib.parallel_config`` sets it), ``backend`` ("threading",
    "processes"/"loky"/"multiprocessing" or "sequential"; other backends
    are not used there), ``prefer``, ``require`` and
    ``inner_max_num_threads``.  ``verbose``, ``temp_folder``,
    ``max_nbytes``, ``mmap_mode`` and ``backend_params`` do not reach them:
    set those with ``joblib.parallel_config``.  Without that backend
    registered, this config does not reach joblib calls at all.
    """

    def __init__(self, backend=default(None), *, n_jobs=default(None),
                 verbose=default(0), temp_folder=default(None),
                 max_nbytes=default("1M"), mmap_mode=default("r"),
                 prefer=default(None), require=default(None),
                 inner_max_num_threads=None, **backend_params):
        self.old_config = get_config()
        new = dict(self.old_config)
        given = {
            "backend": backend, "n_jobs": n_jobs, "verbose": verbose,
            "temp_folder": temp_folder, "max_nbytes": max_nbytes,
            "mmap_mode": mmap_mode, "prefer": prefer, "require": require,
        }
        for key, value in given.items():
            if not is_default(value):
                new[key] = value
        check.check_n_jobs(new["n_jobs"])
        check.check_choice("prefer", new["prefer"], check.PREFER)
        check.check_choice("require", new["require"], check.REQUIRE)
        check.check_choice("mmap_mode", new["mmap_mode"], check.MMAP_MODES)
        check.check_max_nbytes(new["max_nbytes"])
        check.check_verbose(new["verbose"])
        check.check_temp_folder(new["temp_folder"])
        if new["backend"] is not None:
            check_backend(new["backend"])  # unknown names fail here, not later
        if check.check_inner_max_num_threads(inner_max_num_threads) is not None:
            new["inner_max_num_threads"] = inner_max_num_threads
        if backend_params:
            new["backend_params"] = {**new["backend_params"], **backend_params}
        self.config = new
        _local.config = new

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.unregister()

    def unregister(self):
        """Restore the config that was active before this one."""
        _local.config = self.old_config


class parallel_backend(parallel_config):
    """The older spelling of ``parallel_config(backend, n_jobs=-1, ...)``."""

    def __init__(self, backend, n_jobs=-1, inner_max_num_threads=None, **backend_params):
        super().__init__(backend=backend, n_jobs=n_jobs,
                         inner_max_num_threads=inner_max_num_threads, **backend_params)


def effective_n_jobs(n_jobs=-1):
    """How many workers ``Parallel(n_jobs=n_jobs)`` would use here."""
    n_jobs = check.check_n_jobs(n_jobs)
    if n_jobs is None:
        n_jobs = get_config()["n_jobs"]
    return n_workers(n_jobs)
