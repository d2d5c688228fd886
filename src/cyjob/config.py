"""parallel_config / parallel_backend, cpu_count and effective_n_jobs (joblib's meaning)."""

import os
import threading

from cyjob import _validation as check

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
            from cyjob.backends import check_backend

            check_backend(new["backend"])  # unknown names fail here, not later
        if inner_max_num_threads is not None:
            if not check._is_int(inner_max_num_threads) or inner_max_num_threads < 1:
                raise ValueError("inner_max_num_threads must be None or a positive int, "
                                 f"got {inner_max_num_threads!r}")
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


def _cgroup_cpu_limit():
    """CPUs allowed by a cgroup v2/v1 quota, or None."""
    try:
        with open("/sys/fs/cgroup/cpu.max") as f:
            quota, period = f.read().split()[:2]
        if quota != "max":
            return max(1, -(-int(quota) // int(period)))
    except (OSError, ValueError):
        pass
    try:
        with open("/sys/fs/cgroup/cpu/cpu.cfs_quota_us") as f:
            quota = int(f.read())
        with open("/sys/fs/cgroup/cpu/cpu.cfs_period_us") as f:
            period = int(f.read())
        if quota > 0 and period > 0:
            return max(1, -(-quota // period))
    except (OSError, ValueError):
        pass
    return None


_cpu_count_cache = None


def cpu_count(only_physical_cores=False):
    """CPUs this process may use: affinity mask, cgroup quota and the
    ``LOKY_MAX_CPU_COUNT`` override (as joblib honours it)."""
    global _cpu_count_cache
    if _cpu_count_cache is None:
        try:
            count = len(os.sched_getaffinity(0))
        except AttributeError:
            count = os.cpu_count() or 1
        limit = _cgroup_cpu_limit()
        if limit is not None:
            count = min(count, limit)
        _cpu_count_cache = max(1, count)
    count = _cpu_count_cache
    override = os.environ.get("LOKY_MAX_CPU_COUNT")
    if override:
        try:
            count = min(count, max(1, int(override)))
        except ValueError:
            pass
    return count


def effective_n_jobs(n_jobs=-1):
    """How many workers ``Parallel(n_jobs=n_jobs)`` would use here."""
    n_jobs = check.check_n_jobs(n_jobs)
    if n_jobs is None:
        n_jobs = get_config()["n_jobs"]
    if n_jobs is None:
        return 1
    if n_jobs < 0:
        return max(cpu_count() + 1 + n_jobs, 1)
    return n_jobs
