"""backend="dask": batches on a real dask.distributed LocalCluster (loopback)."""

import operator
import os
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

distributed = pytest.importorskip("distributed")
import dask  # noqa: E402  (distributed needs it)

from cyjob import Parallel, TimeoutError, delayed, parallel_config  # noqa: E402
from cyjob.backends.dask import DaskBackend  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def dask_leaves_nothing_behind(tmp_path_factory):
    """distributed writes ``OMP_NUM_THREADS=1`` (and more) into this
    process's environment for the workers it spawns, and its scratch space
    into /tmp/dask-scratch-space by default: later tests (the OpenMP caps of
    test_joblib_bridge) must not inherit the one, nor /tmp the other."""
    environ = dict(os.environ)
    with dask.config.set({"temporary-directory": str(tmp_path_factory.mktemp("dask"))}):
        yield
    for key in set(os.environ) | set(environ):
        if key.startswith("PYTEST_"):
            continue  # pytest's own, kept current by pytest
        if key not in environ:
            del os.environ[key]
        elif os.environ.get(key) != environ[key]:
            os.environ[key] = environ[key]


@pytest.fixture(scope="module")
def client():
    # Threads in this process, talking TCP on loopback: fast to start, and
    # every batch still goes through dask's serialisation.
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False,
                                  protocol="tcp", host="127.0.0.1",
                                  dashboard_address=":0") as cluster:
        with distributed.Client(cluster) as client:
            yield client


@pytest.fixture
def scatter_calls(client, monkeypatch):
    """Records what is scattered through the client."""
    calls = []
    real = client.scatter

    def spy(data, *args, **kwargs):
        calls.append(data)
        return real(data, *args, **kwargs)

    monkeypatch.setattr(client, "scatter", spy)
    return calls


def square(x):
    return x * x


def worker_address(_):
    return distributed.get_worker().address


class TaskFailed(Exception):
    pass


def fail_on(x, bad):
    if x == bad:
        raise TaskFailed(f"task {x} failed")
    return x


def total(array, i):
    return float(array[:10].sum()) + i


class CountingArray(np.ndarray):
    """An array that counts how often it is pickled in this process."""

    pickled = 0

    def __reduce_ex__(self, protocol):
        CountingArray.pickled += 1
        return np.asarray(self).__reduce_ex__(protocol)


class Blob:
    """A plain object with a large pickle, counting its pickles."""

    pickled = 0

    def __init__(self, data):
        self.data = data

    def __reduce__(self):
        Blob.pickled += 1
        return (Blob, (self.data,))


def blob_size(blob, i):
    return len(blob.data) + i


def stored_keys(client):
    return sum(len(keys) for keys in client.has_what().values())


def wait_until(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


# -- results ------------------------------------------------------------------


def test_results_equal_sequential(client):
    expected = [square(x) for x in range(500)]
    assert Parallel(backend="dask")(delayed(square)(x) for x in range(500)) == expected
    with parallel_config(backend="dask"):
        assert Parallel()(delayed(square)(x) for x in range(500)) == expected
    with parallel_config(backend="dask", client=client, n_jobs=-1):
        assert Parallel()(delayed(square)(x) for x in range(500)) == expected


def test_generators(client):
    gen = Parallel(backend="dask", return_as="generator")(delayed(square)(x) for x in range(300))
    assert list(gen) == [x * x for x in range(300)]
    gen = Parallel(backend="dask", return_as="generator_unordered")(
        delayed(square)(x) for x in range(300))
    assert sorted(gen) == [x * x for x in range(300)]


def test_tasks_run_on_the_cluster_workers(client):
    workers = set(client.scheduler_info()["workers"])
    addresses = Parallel(backend="dask", batch_size=1)(
        delayed(worker_address)(x) for x in range(20))
    assert set(addresses) <= workers
    assert len(addresses) == 20


def test_n_workers_from_the_cluster_threads(client):
    backend = DaskBackend(client=client)
    assert backend.effective_n_jobs(None) == 2
    assert backend.effective_n_jobs(-1) == 2
    assert backend.effective_n_jobs(-2) == 1
    assert backend.effective_n_jobs(5) == 5
    with pytest.raises(ValueError):
        backend.effective_n_jobs(0)


def test_n_jobs_1_still_runs_on_the_cluster(client):
    # As with joblib's dask backend: one batch at a time on a worker, where
    # the submit options (resources=, workers=) apply, not in the caller.
    addresses = Parallel(backend="dask", n_jobs=1)(delayed(worker_address)(x) for x in range(4))
    assert set(addresses) <= set(client.nthreads())
    with parallel_config(backend="dask", n_jobs=1):
        addresses = Parallel(return_as="generator")(delayed(worker_address)(x) for x in range(4))
        assert set(addresses) <= set(client.nthreads())


def test_tiny_tasks_are_batched(client, monkeypatch):
    submitted = []
    real = client.submit

    def spy(*args, **kwargs):
        submitted.append(kwargs.get("key"))
        return real(*args, **kwargs)

    monkeypatch.setattr(client, "submit", spy)
    assert Parallel(backend="dask")(delayed(square)(x) for x in range(5000)) == [
        x * x for x in range(5000)]
    assert 0 < len(submitted) < 5000 / 4


# -- errors ---------------------------------------------------------------------


def test_error_keeps_its_type_and_the_worker_traceback(client):
    with pytest.raises(TaskFailed, match="task 13 failed") as info:
        Parallel(backend="dask")(delayed(fail_on)(x, 13) for x in range(100))
    assert "fail_on" in str(info.value.__cause__)


def test_builtin_error_type(client):
    with pytest.raises(ZeroDivisionError):
        Parallel(backend="dask")(delayed(operator.truediv)(1, x) for x in [1, 2, 0, 4])


def test_timeout_raises_and_cancels_the_queued_batches(client):
    ran = []

    def slow(x):
        ran.append(x)
        time.sleep(0.3)
        return x

    with pytest.raises(TimeoutError):
        Parallel(backend="dask", timeout=0.1, batch_size=1, pre_dispatch="all")(
            delayed(slow)(x) for x in range(20))
    assert wait_until(lambda: not any(client.processing().values()))
    assert len(ran) < 20


@pytest.mark.parametrize("option", ["bogus", "key", "scheduler_host"])
def test_unknown_option_is_a_clear_error_before_any_task_runs(client, option):
    ran = []
    with parallel_config(backend="dask", **{option: "x"}):
        with pytest.raises(TypeError, match=f"unexpected option.*'{option}'"):
            Parallel()(delayed(ran.append)(x) for x in range(3))
    assert ran == []


def test_a_client_of_the_wrong_type_is_a_clear_error(client):
    with pytest.raises(TypeError, match="client must be a distributed.Client, got str"):
        Parallel(backend="dask", client=client.scheduler.address)


@pytest.mark.parametrize("bad", ["10", -1, float("nan"), True])
def test_a_bad_wait_for_workers_timeout_is_a_clear_error(client, bad):
    with pytest.raises(ValueError, match="wait_for_workers_timeout"):
        Parallel(backend="dask", wait_for_workers_timeout=bad)


def test_submit_options_reach_the_batches(client):
    assert Parallel(backend="dask", retries=1, priority=5)(
        delayed(square)(x) for x in range(5)) == [0, 1, 4, 9, 16]


def test_no_client_is_a_clear_error():
    code = (
        "from cyjob import Parallel, delayed\n"
        "try:\n"
        "    Parallel(backend='dask')(delayed(abs)(x) for x in range(3))\n"
        "except ValueError as exc:\n"
        "    print(exc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60)
    assert "needs a running dask.distributed Client" in out.stdout, out.stderr


def test_closed_client_is_a_clear_error():
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
                                  dashboard_address=":0") as cluster:
        closed = distributed.Client(cluster, set_as_default=False)
        closed.close()
    with pytest.raises(RuntimeError, match="Client is closed"):
        Parallel(backend="dask", client=closed)(delayed(square)(x) for x in range(3))


# -- large arguments ------------------------------------------------------------


def test_large_array_is_scattered_once_per_call(client, scatter_calls):
    big = np.ones(300_000).view(CountingArray)  # 2.4 MB > max_nbytes="1M"
    CountingArray.pickled = 0
    out = Parallel(backend="dask", batch_size=1)(delayed(total)(big, i) for i in range(30))
    assert out == [10.0 + i for i in range(30)]
    assert len(scatter_calls) == 1
    assert scatter_calls[0][0] is big
    # Inline, it would be pickled into each of the 30 tasks.
    assert CountingArray.pickled <= 4
    Parallel(backend="dask", batch_size=1)(delayed(total)(big, i) for i in range(30))
    assert len(scatter_calls) == 2  # once per call


def test_array_under_max_nbytes_is_not_scattered_once(client, scatter_calls):
    small = np.ones(1000)
    out = Parallel(backend="dask", batch_size=1)(delayed(total)(small.copy(), i)
                                                for i in range(10))
    assert out == [10.0 + i for i in range(10)]
    assert scatter_calls == []
    big = np.ones(300_000)
    Parallel(backend="dask", batch_size=1, max_nbytes="4M")(
        delayed(total)(big.copy(), i) for i in range(3))
    assert scatter_calls == []


def test_object_repeated_across_tasks_is_scattered(client, scatter_calls):
    blob = Blob(b"x" * 200_000)
    Blob.pickled = 0
    out = Parallel(backend="dask", batch_size=1)(delayed(blob_size)(blob, i) for i in range(30))
    assert out == [200_000 + i for i in range(30)]
    assert len(scatter_calls) == 1
    assert Blob.pickled <= 8  # inline in 30 tasks it would be >= 30


def test_small_repeated_object_stays_inline(client, scatter_calls):
    shared = list(range(10))
    out = Parallel(backend="dask", batch_size=1)(
        delayed(operator.getitem)(shared, i) for i in range(10))
    assert out == shared
    assert scatter_calls == []


def test_objects_listed_in_scatter_are_scattered_however_small(client, scatter_calls):
    # joblib's option: parallel_config(backend="dask", scatter=[X, y]).
    shared = list(range(10))
    with parallel_config(backend="dask", scatter=[shared]):
        out = Parallel(batch_size=1)(delayed(operator.getitem)(shared, i) for i in range(10))
    assert out == shared
    assert len(scatter_calls) == 1
    assert scatter_calls[0][0] is shared
    assert Parallel(backend="dask", scatter=(shared,), batch_size=1)(
        delayed(len)(shared) for _ in range(3)) == [10] * 3
    assert len(scatter_calls) == 2


def test_scatter_must_be_a_list_or_a_tuple(client):
    with pytest.raises(TypeError, match="scatter must be a list or a tuple"):
        Parallel(backend="dask", scatter=np.ones(3))


def test_scattered_data_is_released_after_the_call(client):
    assert wait_until(lambda: stored_keys(client) == 0)
    big = np.ones(300_000)
    Parallel(backend="dask", batch_size=1)(delayed(total)(big, i) for i in range(10))
    assert wait_until(lambda: stored_keys(client) == 0)


# -- nesting --------------------------------------------------------------------


def inner_dask_call(i):
    names = Parallel(backend="dask", n_jobs=2)(
        delayed(_thread_name)(j) for j in range(4))
    return i, names == [threading.current_thread().name] * 4


def inner_default_call(i):
    return i, Parallel(n_jobs=2)(delayed(square)(j) for j in range(50)) == [
        j * j for j in range(50)]


def _thread_name(_):
    return threading.current_thread().name


def test_nested_dask_calls_run_in_the_worker_without_deadlock(client):
    # 2 worker threads, 6 outer tasks each waiting for an inner call: sent
    # back to the cluster, the inner tasks would find no free thread.
    out = Parallel(backend="dask", batch_size=1)(delayed(inner_dask_call)(i) for i in range(6))
    assert out == [(i, True) for i in range(6)]


def test_nested_default_calls_inside_dask_tasks(client):
    out = Parallel(backend="dask", batch_size=1)(delayed(inner_default_call)(i) for i in range(4))
    assert out == [(i, True) for i in range(4)]


# -- worker processes -----------------------------------------------------------


@pytest.mark.timeout(120)
def test_worker_processes_smoke():
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  host="127.0.0.1", dashboard_address=":0") as cluster:
        with distributed.Client(cluster, set_as_default=False) as procs:
            with parallel_config(backend="dask", client=procs):
                assert Parallel()(delayed(operator.mul)(x, x) for x in range(200)) == [
                    x * x for x in range(200)]
                big = np.arange(300_000, dtype=np.float64)
                sums = Parallel(batch_size=1)(delayed(np.sum)(big) for _ in range(4))
                assert sums == [float(big.sum())] * 4
                with pytest.raises(ZeroDivisionError):
                    Parallel()(delayed(operator.truediv)(1, x) for x in [1, 0, 2])
