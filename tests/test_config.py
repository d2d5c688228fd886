"""parallel_config / parallel_backend, register_parallel_backend, cpu_count and
effective_n_jobs, with joblib 1.6 as the oracle where it applies."""

import os
import threading
import time

import joblib
import pytest

from cyjob import (
    Parallel,
    cpu_count,
    delayed,
    effective_n_jobs,
    parallel_backend,
    parallel_config,
    register_parallel_backend,
)
from cyjob._dispatch import Executor, InlineExecutor
from cyjob.backends.base import Backend
from cyjob.backends.threads import ThreadingBackend
from helpers import Counter, assert_runs_concurrently, assert_runs_in_caller_thread, ident


def threaded():
    """Threads, with n_jobs from the config."""
    return Parallel(backend="threading", batch_size=1)


def from_config():
    """Backend and n_jobs from the config."""
    return Parallel(batch_size=1)


def threads_unless_configured():
    """Two threads, unless the config's backend runs tasks in the caller:
    require="sharedmem" keeps a backend that shares memory, and makes the
    default one threads."""
    return Parallel(n_jobs=2, batch_size=1, require="sharedmem")


# --------------------------------------------------------------------------
# parallel_config

def test_backend_is_taken_from_the_config():
    with parallel_config(backend="sequential"):
        assert_runs_in_caller_thread(lambda: Parallel(n_jobs=2))
    with parallel_config(backend="threading"):
        assert_runs_concurrently(lambda: Parallel(n_jobs=2, batch_size=1))


def test_n_jobs_is_taken_from_the_config():
    with parallel_config(n_jobs=2):
        assert_runs_concurrently(threaded)
    with parallel_config(backend="threading", n_jobs=1):
        assert_runs_in_caller_thread(lambda: Parallel())


def test_explicit_arguments_win_over_the_config():
    with parallel_config(backend="sequential", n_jobs=1):
        assert_runs_concurrently(lambda: Parallel(n_jobs=2, backend="threading", batch_size=1))
    with parallel_config(n_jobs=2):
        assert_runs_in_caller_thread(lambda: Parallel(n_jobs=1))
    with parallel_config(backend="threading", n_jobs=2):
        assert_runs_in_caller_thread(lambda: Parallel(backend="sequential"))


def test_config_is_restored_after_the_block():
    with parallel_config(n_jobs=2):
        pass
    assert_runs_in_caller_thread(lambda: Parallel())
    with parallel_config(backend="sequential"):
        assert_runs_in_caller_thread(threads_unless_configured)
    assert_runs_concurrently(threads_unless_configured)


def test_config_is_restored_after_an_exception_in_the_block():
    with pytest.raises(ZeroDivisionError):
        with parallel_config(backend="sequential", n_jobs=2):
            1 / 0
    assert_runs_in_caller_thread(lambda: Parallel())
    assert_runs_concurrently(threads_unless_configured)


def test_nested_configs_restore_in_order():
    with parallel_config(backend="threading", n_jobs=2):
        with parallel_config(backend="sequential"):
            assert_runs_in_caller_thread(lambda: Parallel())
        assert_runs_concurrently(from_config)
    assert_runs_in_caller_thread(lambda: Parallel())


def test_config_does_not_leak_into_other_threads():
    # joblib keeps parallel_config per thread.
    seen = []

    def other_thread():
        try:
            assert_runs_concurrently(threads_unless_configured)
            seen.append("ok")
        except BaseException as exc:  # reported by the assertion below
            seen.append(exc)

    with parallel_config(backend="sequential"):
        t = threading.Thread(target=other_thread)
        t.start()
        t.join(30)
    assert seen == ["ok"]


def test_verbose_is_taken_from_the_config(capsys):
    with parallel_config(verbose=10):
        Parallel(n_jobs=2, backend="threading")(delayed(ident)(i) for i in range(10))
        assert "[Parallel(n_jobs=2)]: Done" in capsys.readouterr().err
        Parallel(n_jobs=2, backend="threading", verbose=0)(delayed(ident)(i) for i in range(10))
        assert capsys.readouterr().err == ""
    Parallel(n_jobs=2, backend="threading")(delayed(ident)(i) for i in range(10))
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("kwargs", [
    {"n_jobs": 0}, {"backend": "nope"}, {"prefer": "fast"}, {"require": "all"},
    {"max_nbytes": "1Q"}, {"verbose": "x"},
], ids=repr)
def test_bad_config_values_are_rejected_and_change_nothing(kwargs):
    with parallel_config(n_jobs=2):
        with pytest.raises((ValueError, TypeError)) as info:
            parallel_config(**kwargs)
        assert next(iter(kwargs)) in str(info.value)
        assert_runs_concurrently(threaded)


def test_parallel_backend_defaults_to_every_cpu():
    with parallel_backend("sequential"):
        assert_runs_in_caller_thread(lambda: Parallel())
    if cpu_count() >= 2:
        with parallel_backend("threading"):
            assert_runs_concurrently(from_config, parties=min(cpu_count(), 4))
    with parallel_backend("threading", n_jobs=1):
        assert_runs_in_caller_thread(lambda: Parallel())
    assert_runs_in_caller_thread(lambda: Parallel())


@pytest.mark.parametrize("backend", ["threading", "sequential"])
@pytest.mark.parametrize("hints", [{"prefer": "threads"}, {"prefer": "processes"},
                                   {"require": "sharedmem"}], ids=repr)
def test_prefer_and_require_hints_run_the_tasks(backend, hints):
    assert Parallel(n_jobs=2, backend=backend, **hints)(
        delayed(ident)(i) for i in range(50)) == list(range(50))


# (kwargs of Parallel, kwargs of parallel_config): libraries read Parallel.n_jobs.
N_JOBS_CASES = [
    ({}, {}), ({"n_jobs": None}, {}), ({"n_jobs": 3}, {}), ({"n_jobs": -1}, {}),
    ({"n_jobs": "2"}, {}), ({}, {"n_jobs": 3}), ({"n_jobs": None}, {"n_jobs": 3}),
    ({"n_jobs": 2}, {"n_jobs": 3}), ({}, {"n_jobs": None}), ({}, {"backend": "threading"}),
    ({"backend": "sequential"}, {}), ({"backend": "loky"}, {}),
]


@pytest.mark.parametrize("kwargs, config", N_JOBS_CASES, ids=repr)
def test_n_jobs_attribute_matches_joblib(kwargs, config):
    # joblib: an n_jobs given nowhere is the backend's default_n_jobs (1).
    with parallel_config(**config), joblib.parallel_config(**config):
        ours, theirs = Parallel(**kwargs), joblib.Parallel(**kwargs)
        assert ours.n_jobs == theirs.n_jobs
        assert repr(ours) == repr(theirs)


@pytest.mark.parametrize("backend", ["loky", "multiprocessing"])
def test_an_explicit_process_backend_runs_inside_a_sharedmem_config(backend):
    # joblib applies parallel_config's require="sharedmem" to the backend it
    # picks, not to one the call names: it runs on that backend's processes.
    with parallel_config(require="sharedmem"):
        pids = Parallel(n_jobs=2, backend=backend)(delayed(os.getpid)() for _ in range(4))
    assert os.getpid() not in pids
    with pytest.raises(ValueError, match="shared memory"):
        Parallel(n_jobs=2, backend=backend, require="sharedmem")


def test_require_sharedmem_shares_memory():
    box = []
    Parallel(n_jobs=2, require="sharedmem", batch_size=1)(delayed(box.append)(i) for i in range(20))
    assert sorted(box) == list(range(20))


# --------------------------------------------------------------------------
# register_parallel_backend

class CountingThreads(ThreadingBackend):
    """The thread pool, counting instances and executors asked for."""

    instances = []

    def __init__(self, **backend_params):
        super().__init__(**backend_params)
        self.n_executors = 0
        CountingThreads.instances.append(self)

    def executor(self, n_workers, parallel=None):
        self.n_executors += 1
        return super().executor(n_workers, parallel)


def test_registered_backend_subclass_is_used_by_name():
    register_parallel_backend("test-counting-threads", CountingThreads)
    before = len(CountingThreads.instances)
    results = Parallel(n_jobs=2, backend="test-counting-threads", tag="x")(
        delayed(ident)(i) for i in range(100))
    assert results == list(range(100))
    backend = CountingThreads.instances[before]
    assert backend.backend_params == {"tag": "x"}
    assert backend.n_executors >= 1
    assert_runs_concurrently(lambda: Parallel(n_jobs=2, backend="test-counting-threads",
                                              batch_size=1))


def test_registered_backend_is_used_from_the_config():
    register_parallel_backend("test-counting-threads", CountingThreads)
    before = len(CountingThreads.instances)
    with parallel_config(backend="test-counting-threads", n_jobs=2):
        assert Parallel()(delayed(ident)(i) for i in range(10)) == list(range(10))
    assert len(CountingThreads.instances) > before
    assert CountingThreads.instances[-1].n_executors >= 1


def test_backend_instance_can_be_passed_directly():
    backend = CountingThreads()
    assert Parallel(n_jobs=2, backend=backend)(delayed(ident)(i) for i in range(10)) == list(range(10))
    assert backend.n_executors >= 1


class RecordingExecutor(Executor):
    """An executor written from the contract in cyjob/backends/base.py:
    ``submit(batch)`` runs ``batch.task_tuples()`` (``(func, args, kwargs)``
    tuples) and reports with ``batch.call.batch_done(batch, results, error, duration_ns)``."""

    def __init__(self, n_workers):
        super().__init__(n_workers)
        self.n_batches = 0

    def submit(self, batch):
        self.n_batches += 1
        start = time.perf_counter_ns()
        results = []
        try:
            for func, args, kwargs in batch.task_tuples():
                results.append(func(*args, **kwargs))
        except Exception as exc:
            batch.call.batch_done(batch, None, exc, 0.0)
            return
        batch.call.batch_done(batch, results, None, float(time.perf_counter_ns() - start))


class RecordingBackend(Backend):
    name = "test-recording"
    supports_sharedmem = True

    def __init__(self, **backend_params):
        super().__init__(**backend_params)
        self.executor_ = RecordingExecutor(2)

    def executor(self, n_workers, parallel=None):
        return self.executor_


def test_custom_backend_with_its_own_executor():
    backend = RecordingBackend()
    register_parallel_backend("test-recording", lambda **params: backend)
    results = Parallel(n_jobs=2, backend="test-recording", batch_size=3)(
        delayed(ident)(i) for i in range(10))
    assert results == list(range(10))
    assert backend.executor_.n_batches == 4


class SizeRecordingExecutor(Executor):
    """Runs batches in the caller's thread and records their sizes."""

    def __init__(self, n_workers):
        super().__init__(n_workers)
        self.sizes = []
        self.inner = InlineExecutor(1)

    def submit(self, batch):
        self.sizes.append(len(batch))
        self.inner.submit(batch)


class SizeRecordingBackend(Backend):
    name = "test-size-recording"
    supports_sharedmem = True

    def __init__(self, **backend_params):
        super().__init__(**backend_params)
        self.executor_ = SizeRecordingExecutor(2)

    def executor(self, n_workers, parallel=None):
        return self.executor_


@pytest.mark.parametrize("make_input", [list, iter], ids=["list", "iterator"])
@pytest.mark.parametrize("batch_size", [1, 3, 4])
def test_explicit_batch_size_is_honoured(make_input, batch_size):
    backend = SizeRecordingBackend()
    tasks = make_input([delayed(ident)(i) for i in range(10)])
    assert Parallel(n_jobs=2, backend=backend, batch_size=batch_size)(tasks) == list(range(10))
    expected = [batch_size] * (10 // batch_size) + ([10 % batch_size] if 10 % batch_size else [])
    assert backend.executor_.sizes == expected


def test_register_parallel_backend_rejects_bad_factories():
    with pytest.raises(TypeError):
        register_parallel_backend("test-not-callable", 42)
    register_parallel_backend("test-returns-int", lambda **params: 42)
    counter = Counter()
    with pytest.raises(TypeError, match="test-returns-int"):
        Parallel(n_jobs=2, backend="test-returns-int")(delayed(counter)(i) for i in range(5))
    assert counter.value == 0


# --------------------------------------------------------------------------
# cpu_count and effective_n_jobs

def test_cpu_count_matches_joblib():
    assert isinstance(cpu_count(), int)
    assert cpu_count() >= 1
    assert cpu_count() == joblib.cpu_count()
    assert 1 <= cpu_count(only_physical_cores=True) <= cpu_count()


def test_cpu_count_honours_loky_max_cpu_count(monkeypatch):
    monkeypatch.setenv("LOKY_MAX_CPU_COUNT", "1")
    assert cpu_count() == joblib.cpu_count() == 1
    assert effective_n_jobs(-1) == 1


@pytest.mark.parametrize("n_jobs", [1, 2, 3, 7, -1, -2, -3, -100])
def test_effective_n_jobs_matches_joblib(n_jobs):
    assert effective_n_jobs(n_jobs) == joblib.effective_n_jobs(n_jobs)


def test_effective_n_jobs_defaults():
    assert effective_n_jobs() == cpu_count() == joblib.effective_n_jobs()
    assert effective_n_jobs(None) == 1 == joblib.effective_n_jobs(None)
    with parallel_config(n_jobs=3), joblib.parallel_config(n_jobs=3):
        assert effective_n_jobs(None) == 3 == joblib.effective_n_jobs(None)


# As in Parallel, n_jobs goes through int() as joblib's Parallel does: 0.5 is
# 0, "2.3" no int.
@pytest.mark.parametrize("n_jobs", [0, 0.5, "2.3", "many", True])
def test_effective_n_jobs_rejects_bad_values(n_jobs):
    with pytest.raises((ValueError, TypeError)):
        effective_n_jobs(n_jobs)
