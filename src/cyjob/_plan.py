"""The plan of a ``Parallel``: its arguments and the active config, checked
and resolved once into one immutable value that backends receive.

``Parallel(...)`` resolves a plan; ``Parallel.__call__`` runs it; a backend's
``executor(n_workers, plan)`` reads what it needs from it (sharing settings,
the output kind, the batch policy) and nothing else of ``Parallel``.
"""

from os import environ as _environ
from typing import Any, Callable, NamedTuple, Optional

from cyjob import _validation as check
from cyjob._batching import DEFAULT_MAX_BATCH_SIZE
from cyjob import backends as _backends
from cyjob.backends import default_backend_name, get_backend, shared_backend
from cyjob.backends.joblib_api import JoblibAPIBackend
from cyjob.config import DEFAULTS, get_config, is_default

# Plans by the arguments that gave them, while no parallel_config is active:
# libraries build a Parallel per call in inner loops, always with the same
# arguments, and checking them again costs ~10 us on the cold caches a task
# leaves (benchmarks/bench_auto.py, 64 x 100 floats).
_PLANS: "dict[tuple, Plan]" = {}
_PLANS_MAX = 256


class Plan(NamedTuple):
    """Everything a call needs to know, checked.

    ``n_jobs`` .. ``mmap_mode`` are ``Parallel``'s arguments with the active
    config applied, as joblib names them; the rest is derived.
    """

    n_jobs: int                     #: as given or configured, else the backend's default_n_jobs
    backend: Any                    #: the Backend instance
    n_workers: int                  #: the backend's workers for n_jobs
    return_as: str
    verbose: int
    timeout: Optional[float]
    pre_dispatch: Any
    window: Optional[Callable[[int], int]]  #: batches in flight for n workers; None: all
    batch_size: Any
    fixed_batch_size: int           #: tasks per batch, 0 for automatic
    max_batch_size: int
    prefer: Optional[str]
    require: Optional[str]
    temp_folder: Any
    max_nbytes: Optional[int]
    mmap_mode: Optional[str]
    inner_max_num_threads: Optional[int]
    progress: bool
    label: str                      #: "Parallel(n_jobs=2)", for messages
    backend_name: Optional[str]     #: the backend name given or configured, if a name
    ordered: bool                   #: results in input order (else in completion order)
    via_joblib: bool                #: a backend written for joblib's API (joblib runs it)
    #: Tasks per batch for a list output computed in one thread: balance
    #: means nothing there, so batches as large as allowed (0: the usual rule
    #: applies, as batch_size was given or the output is a generator).
    one_thread_batch_size: int


def _choose_backend(backend, prefer, require, backend_params, config, require_given):
    """joblib's precedence: explicit backend, then parallel_config's, then the
    default; require="sharedmem" forces a backend that shares memory.

    ``require`` is the call's or else the config's; ``require_given`` the
    call's own.  As in joblib, a backend the call names is checked against
    the call's own ``require`` only: a config's require="sharedmem" steers
    the backend it picks, it does not refuse ``backend="loky"``.
    """
    if prefer == "processes" and require == "sharedmem":
        raise ValueError("prefer='processes' contradicts require='sharedmem': worker "
                         "processes do not share the caller's memory")
    if backend is not None:
        chosen = get_backend(backend, **backend_params)
        if require_given == "sharedmem" and not chosen.supports_sharedmem:
            raise ValueError(f"Backend {chosen.name!r} does not support shared memory "
                             "(require='sharedmem')")
        return chosen
    if config["backend"] is not None:
        chosen = get_backend(config["backend"], **{**config["backend_params"], **backend_params})
        if require != "sharedmem" or chosen.supports_sharedmem:
            return chosen
        return get_backend("threading")
    if require == "sharedmem" or prefer == "threads":
        return get_backend("threading")
    if prefer == "processes":
        return get_backend("processes", **backend_params)
    return get_backend(default_backend_name(), **backend_params)


def _name_of(backend):
    return backend if isinstance(backend, str) else None


def resolve(label, n_jobs, backend, return_as, verbose, timeout, pre_dispatch, batch_size,
            temp_folder, max_nbytes, mmap_mode, prefer, require, max_batch_size, progress,
            backend_kwargs):
    """The Plan for ``Parallel``'s arguments under the active config (cached
    while no config is active, for the stateless built-in backends)."""
    config = get_config()
    key = None
    if config is DEFAULTS and not backend_kwargs:
        args = (label, n_jobs, backend, return_as, verbose, timeout, pre_dispatch, batch_size,
                temp_folder, max_nbytes, mmap_mode, prefer, require, max_batch_size, progress)
        # With the types: 1, 1.0 and True are equal keys, not equally valid.
        # LOKY_MAX_CPU_COUNT: what a negative n_jobs means can change (read
        # only for an n_jobs that may count CPUs: a missing variable costs a
        # KeyError inside os.environ, and most calls give a positive n_jobs
        # or none, which means 1 here).
        cpus = None
        if not (type(n_jobs) is int and n_jobs > 0 or n_jobs is None or is_default(n_jobs)):
            cpus = _environ.get("LOKY_MAX_CPU_COUNT")
        key = (_backends.registry_version, cpus, args, tuple(map(type, args)))
        try:
            plan = _PLANS.get(key)
        except TypeError:  # an unhashable argument: check it every time
            plan, key = None, None
        if plan is not None:
            return plan
    if n_jobs is None or is_default(n_jobs):
        n_jobs = config["n_jobs"]
    n_jobs = check.check_n_jobs(n_jobs)
    verbose = check.check_verbose(config["verbose"] if is_default(verbose) else verbose)
    return_as = check.check_choice("return_as", return_as, check.RETURN_AS)
    timeout = check.check_timeout(timeout)
    if not isinstance(progress, bool):
        raise TypeError(f"progress must be True or False, got {progress!r}")
    window = check.check_pre_dispatch(pre_dispatch)
    fixed_batch_size = check.check_batch_size(batch_size)
    max_batch_size = check.check_max_batch_size(max_batch_size) or DEFAULT_MAX_BATCH_SIZE
    pick = config.get
    prefer = check.check_choice(
        "prefer", pick("prefer") if is_default(prefer) else prefer, check.PREFER)
    require_given = None if is_default(require) else require
    require = check.check_choice(
        "require", pick("require") if is_default(require) else require, check.REQUIRE)
    temp_folder = check.check_temp_folder(
        pick("temp_folder") if is_default(temp_folder) else temp_folder)
    max_nbytes = check.check_max_nbytes(
        pick("max_nbytes") if is_default(max_nbytes) else max_nbytes)
    mmap_mode = check.check_choice(
        "mmap_mode", pick("mmap_mode") if is_default(mmap_mode) else mmap_mode,
        check.MMAP_MODES)
    explicit_backend = None if is_default(backend) else backend
    chosen = _choose_backend(explicit_backend, prefer, require, backend_kwargs, config,
                             require_given)
    if n_jobs is None:
        # Given nowhere: the backend's default, as joblib resolves it (its
        # Parallel.n_jobs is never None).
        n_jobs = chosen.default_n_jobs
    plan = Plan(
        n_jobs=n_jobs, backend=chosen,
        n_workers=check.check_n_workers(chosen.effective_n_jobs(n_jobs), n_jobs),
        return_as=return_as, verbose=verbose, timeout=timeout,
        pre_dispatch=pre_dispatch, window=window,
        batch_size=batch_size, fixed_batch_size=fixed_batch_size, max_batch_size=max_batch_size,
        prefer=prefer, require=require, temp_folder=temp_folder, max_nbytes=max_nbytes,
        mmap_mode=mmap_mode, inner_max_num_threads=pick("inner_max_num_threads"),
        progress=progress, label=f"{label}(n_jobs={n_jobs})",
        backend_name=_name_of(explicit_backend if explicit_backend is not None
                              else config["backend"]),
        ordered=return_as != "generator_unordered",
        via_joblib=isinstance(chosen, JoblibAPIBackend),
        one_thread_batch_size=0 if fixed_batch_size or return_as != "list" else max_batch_size)
    if key is not None and chosen is shared_backend(chosen.name):
        # (Only the stateless built-in backends: dask's, say, holds a client.)
        if len(_PLANS) >= _PLANS_MAX:
            _PLANS.clear()
        _PLANS[key] = plan
    return plan
