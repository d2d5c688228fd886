"""dask.distributed: batches run as tasks on the cluster of a ``distributed.Client``.

``Parallel(backend="dask")`` (or ``parallel_config(backend="dask")``) uses the
client passed as ``client=...``, else the active one (``distributed.get_client``).
The core does the batching, ordering, errors and time-outs as for threads; this
module only ships batches and brings results back:

* each batch is one dask task running ``cyjob._tasks.run_tasks`` on a worker,
  which measures the batch there, so the batch sizer sees run times, not
  network round trips;
* large arguments are scattered once per call and the tasks refer to them:
  numpy arrays over ``max_nbytes``, any object passed to several tasks
  (the same object, by ``id``) whose pickle is over ``REPEATED_MIN_BYTES``,
  and the objects listed in ``scatter=[...]`` (joblib's option), whatever
  their size;
* a ``Parallel`` running inside a dask task runs sequentially in that task's
  thread: waiting there for more tasks of the same cluster could deadlock
  it once every worker thread waits;
* when a call ends early (error, time-out, generator closed), its pending
  tasks are cancelled and its scattered data released.
"""

import asyncio
import inspect
import numbers
import pickle
import traceback
import uuid
from collections import OrderedDict
from functools import partial

try:
    import distributed
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "backend='dask' needs dask.distributed: pip install 'cyjob[dask]'") from exc

import cloudpickle
import numpy as np

from cyjob._cpus import n_workers
from cyjob._dispatch import Executor
from cyjob._tasks import run_tasks
from cyjob.backends.base import Backend
from cyjob.backends.sequential import SequentialBackend
from cyjob.exceptions import chain_remote_traceback, traceback_text

__all__ = ["DaskBackend", "DaskExecutor", "inside_dask_worker"]

# An object seen in two tasks of a call is scattered when its pickle is at
# least this big.  A scatter costs about one scheduler round trip (~2 ms on
# loopback, tests/test_dask.py's cluster); an inline copy of 64 KiB costs
# ~20 us per task, so below this size inlining wins for calls of < ~100 tasks.
REPEATED_MIN_BYTES = 64 * 1024
# Distinct argument objects remembered per call to spot repeats: the shared
# object of a call (a data frame, a model) reappears in every task, so a
# short memory finds it without keeping every argument of the call alive.
RECENT_OBJECTS = 256
# Types never worth scattering, however often they repeat.
_ATOMIC = (type(None), bool, int, float, complex, str, bytes, type)
_NOT_LISTED = object()  # (None may be listed in scatter=[...])
# The options of client.submit a call may set for its batches: any other
# name would reach the batch function on the worker as a keyword argument
# and fail there.  (cyjob sets key and pure itself; a batch is no actor.)
SUBMIT_OPTIONS = frozenset(
    name for name, param in inspect.signature(distributed.Client.submit).parameters.items()
    if param.kind is param.KEYWORD_ONLY) - {"key", "pure", "actor", "actors"}


def inside_dask_worker():
    """True in a thread running a task of a dask worker."""
    try:
        distributed.get_worker()
    except ValueError:
        return False
    return True


class _Ref:
    """Stands in a task's arguments for the ``index``-th scattered object."""

    __slots__ = ("index",)

    def __init__(self, index):
        self.index = index

    def __reduce__(self):
        return (_Ref, (self.index,))


class _Payload:
    """A flat batch, opaque to dask (it does not walk through it looking
    for futures); ``ref_tasks`` lists the tasks that hold ``_Ref``s."""

    __slots__ = ("flat", "ref_tasks")

    def __init__(self, flat, ref_tasks):
        self.flat = flat
        self.ref_tasks = ref_tasks

    def __reduce__(self):
        return (_Payload, (self.flat, self.ref_tasks))


def _resolve(value, values):
    return values[value.index] if type(value) is _Ref else value


def _run_batch(payload, *values):
    """Run on a dask worker: put the scattered objects (``values``, fetched
    by dask) back in place, run the batch; return
    ``(results, error, traceback_text, duration_ns)``."""
    flat = payload.flat
    if payload.ref_tasks:
        flat = list(flat)
        for i in payload.ref_tasks:
            flat[3 * i + 1] = tuple([_resolve(a, values) for a in flat[3 * i + 1]])
            flat[3 * i + 2] = {k: _resolve(v, values) for k, v in flat[3 * i + 2].items()}
    results, error, duration_ns = run_tasks(flat)
    if error is None:
        return results, None, None, duration_ns
    text = traceback_text(error)
    try:
        pickle.loads(pickle.dumps(error))
    except Exception:
        # The caller must get something: keep the type's name and message.
        error = RuntimeError(f"{type(error).__module__}.{type(error).__qualname__}: {error}")
    error.__traceback__ = None
    return None, error, text, duration_ns


class _CallState:
    """What one call has in flight on the cluster."""

    def __init__(self):
        self.futures = set()          # dask futures of its running batches
        self.scattered = {}           # id(obj) -> (obj, future)
        self.recent = OrderedDict()   # id(obj) -> (obj, seen in a task before, small)


class DaskExecutor(Executor):
    """Submits batches to a ``distributed.Client``; reports them from dask's
    callback thread."""

    # A dask task costs ~10 ms of scheduling here: batches of at least 50 ms.
    min_batch_seconds = 0.050

    def __init__(self, n_workers, client, max_nbytes=1 << 20, submit_kwargs=None,
                 scatter=()):
        super().__init__(n_workers)
        self.client = client
        self.max_nbytes = max_nbytes
        self.submit_kwargs = dict(submit_kwargs or {})
        # The objects the caller asked to scatter (by id; kept alive here so
        # that no other object takes one of their ids meanwhile).
        self.always_scattered = {id(obj): obj for obj in scatter}
        self._calls = {}

    # -- scattering (caller's thread) ------------------------------------------

    def _scatter(self, state, obj):
        future = self.client.scatter([obj], hash=False)[0]
        state.scattered[id(obj)] = (obj, future)
        return future

    def _worth_scattering(self, state, obj):
        """Decide for one argument; True means scatter it now."""
        if self.always_scattered.get(id(obj), _NOT_LISTED) is obj:
            return True  # listed in scatter=[...]
        if isinstance(obj, _ATOMIC) or callable(obj):
            return False  # functions travel by reference: small
        if isinstance(obj, np.ndarray):
            if self.max_nbytes is not None and obj.nbytes > self.max_nbytes:
                return True
        key = id(obj)
        recent = state.recent
        entry = recent.get(key)
        if entry is None or entry[0] is not obj:
            recent[key] = (obj, False)
            if len(recent) > RECENT_OBJECTS:
                recent.popitem(last=False)
            return False
        recent.move_to_end(key)
        if entry[1]:
            return False  # already measured: too small
        if isinstance(obj, np.ndarray):
            size = obj.nbytes
        else:
            try:
                size = len(cloudpickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL))
            except Exception:
                size = 0  # let the submission report it
        if size >= REPEATED_MIN_BYTES:
            return True
        recent[key] = (obj, True)
        return False

    def _swap(self, state, value, deps, dep_index):
        """``value`` or a ``_Ref`` to its scattered copy."""
        hit = state.scattered.get(id(value))
        if hit is None or hit[0] is not value:
            if not self._worth_scattering(state, value):
                return value
            future = self._scatter(state, value)
        else:
            future = hit[1]
        index = dep_index.get(future.key)
        if index is None:
            index = dep_index[future.key] = len(deps)
            deps.append(future)
        return _Ref(index)

    def _prepare(self, state, tasks):
        flat = list(tasks)
        deps, dep_index, ref_tasks = [], {}, []
        for i in range(len(flat) // 3):
            args, kwargs = flat[3 * i + 1], flat[3 * i + 2]
            new_args = tuple([self._swap(state, a, deps, dep_index) for a in args])
            new_kwargs = {k: self._swap(state, v, deps, dep_index) for k, v in kwargs.items()}
            if any(type(a) is _Ref for a in new_args) or any(
                    type(v) is _Ref for v in new_kwargs.values()):
                flat[3 * i + 1], flat[3 * i + 2] = new_args, new_kwargs
                ref_tasks.append(i)
        return _Payload(flat, ref_tasks), deps

    # -- the Executor interface ----------------------------------------------

    def submit(self, batch):
        call = batch.call
        state = self._calls.get(call)
        if state is None:
            state = self._calls[call] = _CallState()
        payload, deps = self._prepare(state, batch.tasks)
        func = batch.tasks[0]
        name = getattr(func, "__name__", type(func).__name__)
        future = self.client.submit(
            _run_batch, payload, *deps, key=f"cyjob-{name}-{uuid.uuid4().hex}",
            pure=False, **self.submit_kwargs)
        state.futures.add(future)
        future.add_done_callback(partial(self._batch_finished, state, batch))

    def _batch_finished(self, state, batch, future):
        """In dask's callback thread: hand the outcome to the core."""
        state.futures.discard(future)
        call = batch.call
        results = error = None
        duration_ns = 0.0
        if future.cancelled():
            if not call.was_aborted:
                error = RuntimeError(
                    f"dask cancelled the task running tasks {batch.start} to "
                    f"{batch.start + batch.size - 1} (client closed or task lost)")
        else:
            try:
                results, error, text, duration_ns = future.result()
            except BaseException as exc:  # the task itself failed on dask's side
                error = exc
            else:
                if error is not None:
                    chain_remote_traceback(error, text)
        call.batch_done(batch, results, error, duration_ns)

    def call_finished(self, call):
        state = self._calls.pop(call, None)
        if state is None:
            return
        pending = list(state.futures)
        state.futures.clear()
        # Dropping the futures lets dask release the scattered data.
        state.scattered.clear()
        state.recent.clear()
        if pending:
            try:
                self.client.cancel(pending)
            except Exception:
                pass  # client closing: its tasks go with it


class DaskBackend(Backend):
    """Run batches on a dask.distributed cluster.

    Parameters
    ----------
    client : distributed.Client, optional
        The client to use; default: the active one (``distributed.get_client()``).
    wait_for_workers_timeout : float, default=10
        Seconds to wait for a first worker when the cluster has none yet.
    scatter : list or tuple, optional
        Objects to scatter to the cluster once per call wherever a task
        receives them, however small (joblib's option of the same name).
    **submit_kwargs
        Passed to ``client.submit`` for every batch (``resources``,
        ``priority``, ``retries``...).
    """

    name = "dask"
    supports_sharedmem = False
    default_n_jobs = -1  # every thread of the cluster, as joblib's dask backend
    # n_jobs=1 means one batch at a time on the cluster, as in joblib: the
    # tasks may need what only the workers have (resources=, data, memory).
    runs_elsewhere = True

    def __init__(self, client=None, wait_for_workers_timeout=10.0, scatter=None,
                 **submit_kwargs):
        super().__init__(client=client, wait_for_workers_timeout=wait_for_workers_timeout,
                         scatter=scatter, **submit_kwargs)
        unknown = sorted(set(submit_kwargs) - SUBMIT_OPTIONS)
        if unknown:
            hint = (" (joblib's scheduler_host: pass client=distributed.Client(address))"
                    if "scheduler_host" in unknown else "")
            raise TypeError(
                f"backend='dask' got unexpected option(s) {', '.join(map(repr, unknown))}"
                f"{hint}; it takes client, wait_for_workers_timeout, scatter and these "
                f"options of client.submit: {', '.join(sorted(SUBMIT_OPTIONS))}")
        if client is not None and not isinstance(client, distributed.Client):
            # (Else an AttributeError deep in the first call.)
            raise TypeError(f"backend='dask': client must be a distributed.Client, got "
                            f"{type(client).__name__} (for an address: "
                            "client=distributed.Client(address))")
        if wait_for_workers_timeout is not None and (
                isinstance(wait_for_workers_timeout, bool)
                or not isinstance(wait_for_workers_timeout, numbers.Real)
                or not wait_for_workers_timeout >= 0):
            raise ValueError("backend='dask': wait_for_workers_timeout must be a number of "
                             f"seconds >= 0 or None, got {wait_for_workers_timeout!r}")
        if scatter is not None and not isinstance(scatter, (list, tuple)):
            raise TypeError(f"backend='dask': scatter must be a list or a tuple of objects, "
                            f"got {type(scatter).__name__}")
        self._client = client
        self.wait_for_workers_timeout = wait_for_workers_timeout
        self.scatter = list(scatter or ())
        self.submit_kwargs = submit_kwargs

    def get_client(self):
        """The client batches go to; ValueError if there is none, RuntimeError
        if it is closed."""
        client = self._client
        if client is None:
            try:
                client = distributed.get_client()
            except ValueError as exc:
                raise ValueError(
                    "backend='dask' needs a running dask.distributed Client: start one "
                    "first (from distributed import Client; client = Client()), or "
                    "pass it: parallel_config(backend='dask', client=client)") from exc
        status = getattr(client, "status", "running")
        if status in ("closing", "closed", "failed"):
            raise RuntimeError(f"backend='dask': the dask Client is {status}; "
                               "start a new one or pass a running one as client=")
        if getattr(client, "asynchronous", False):
            raise RuntimeError("backend='dask' needs a synchronous Client "
                               "(not Client(asynchronous=True))")
        return client

    def n_threads(self):
        """Worker threads in the cluster (waits a while for a first worker)."""
        client = self.get_client()
        total = sum(client.nthreads().values())
        if total == 0 and self.wait_for_workers_timeout:
            try:
                client.wait_for_workers(1, timeout=self.wait_for_workers_timeout)
            except (TimeoutError, asyncio.TimeoutError) as exc:
                raise TimeoutError(
                    f"backend='dask': the cluster has had no worker for "
                    f"{self.wait_for_workers_timeout:g} s; start workers, or wait longer "
                    "with parallel_config(backend='dask', wait_for_workers_timeout=...)"
                ) from exc
            total = sum(client.nthreads().values())
        return max(total, 1)

    def effective_n_jobs(self, n_jobs):
        """Batches run at once: the cluster's threads for None or -1, fewer
        for other negative values, ``n_jobs`` when positive; 1 inside a dask
        task (nested calls run sequentially there)."""
        if n_jobs == 0:
            n_workers(n_jobs)  # the same error as everywhere
        if inside_dask_worker():
            return 1
        if n_jobs is not None and n_jobs > 0:
            self.get_client()  # no client: fail now, not at the first call
            return n_jobs
        return n_workers(-1 if n_jobs is None else n_jobs, total=self.n_threads())

    def executor(self, n_workers, plan=None):
        if inside_dask_worker():
            return SequentialBackend().executor(1, plan)
        max_nbytes = plan.max_nbytes if plan is not None else 1 << 20
        return DaskExecutor(n_workers, self.get_client(), max_nbytes, self.submit_kwargs,
                            self.scatter)

    def __repr__(self):
        return f"DaskBackend(client={self._client!r})"
