"""The joblib backend "cyjob" (cyjob.register_joblib_backend), driven by joblib itself."""

import multiprocessing
import subprocess
import sys
import threading
import time

import pytest

joblib = pytest.importorskip("joblib")

import cyjob  # noqa: E402

BACKEND = cyjob.register_joblib_backend()


def square(x):
    return x * x


def thread_name(_):
    return threading.current_thread().name


def fail_on(x, bad):
    if x == bad:
        raise KeyError(f"task {x} failed")
    return x


def test_import_cyjob_does_not_import_joblib():
    code = "import sys, cyjob; sys.exit('joblib' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], timeout=30).returncode == 0


def test_results_in_order_on_cyjob_worker_threads():
    with joblib.parallel_config(backend="cyjob", n_jobs=2):
        assert joblib.Parallel()(joblib.delayed(square)(x) for x in range(1000)) == [
            x * x for x in range(1000)]
        names = joblib.Parallel()(joblib.delayed(thread_name)(x) for x in range(50))
    assert all(name.startswith("cyjob-worker") for name in names), set(names)


def test_explicit_backend_name_and_generators():
    parallel = joblib.Parallel(n_jobs=2, backend="cyjob", return_as="generator_unordered")
    assert sorted(parallel(joblib.delayed(square)(x) for x in range(200))) == sorted(
        x * x for x in range(200))
    gen = joblib.Parallel(n_jobs=2, backend="cyjob", return_as="generator")(
        joblib.delayed(square)(x) for x in range(200))
    assert list(gen) == [x * x for x in range(200)]


def test_n_jobs_one_falls_back_to_the_caller_thread():
    with joblib.parallel_config(backend="cyjob", n_jobs=1):
        names = joblib.Parallel()(joblib.delayed(thread_name)(x) for x in range(5))
    assert set(names) == {threading.current_thread().name}


def test_error_keeps_its_type_and_shows_the_worker_traceback():
    with joblib.parallel_config(backend="cyjob", n_jobs=2):
        with pytest.raises(KeyError, match="task 7 failed") as info:
            joblib.Parallel()(joblib.delayed(fail_on)(x, 7) for x in range(100))
    assert "fail_on" in str(info.value.__cause__)


def test_error_skips_the_batches_still_queued():
    ran = []

    def slow(x):
        ran.append(x)
        if x == 0:
            raise ValueError("first task fails")
        time.sleep(0.01)
        return x

    with pytest.raises(ValueError):
        joblib.Parallel(n_jobs=2, backend="cyjob", pre_dispatch="all", batch_size=1)(
            joblib.delayed(slow)(x) for x in range(200))
    time.sleep(0.1)  # let the running batches finish
    assert len(ran) < 200


def test_nested_joblib_calls_run_sequentially_in_the_worker():
    def inner(i):
        names = joblib.Parallel(n_jobs=2)(joblib.delayed(thread_name)(j) for j in range(4))
        return i, set(names) == {threading.current_thread().name}

    with joblib.parallel_config(backend="cyjob", n_jobs=2):
        out = joblib.Parallel()(joblib.delayed(inner)(i) for i in range(8))
    assert out == [(i, True) for i in range(8)]


def test_timeout_raises_joblibs_error():
    with pytest.raises(multiprocessing.TimeoutError):
        joblib.Parallel(n_jobs=2, backend="cyjob", timeout=0.2)(
            joblib.delayed(time.sleep)(s) for s in [0.0, 1.0, 0.0])


def test_auto_batching_groups_tiny_tasks():
    # Many tiny tasks must not be sent one by one (joblib's threading backend does).
    class Counting(BACKEND):
        submitted = 0

        def submit(self, func, callback=None):
            type(self).submitted += 1
            return super().submit(func, callback)

    joblib.register_parallel_backend("cyjob-counting-batches", Counting)
    with joblib.parallel_config(backend="cyjob-counting-batches", n_jobs=2):
        out = joblib.Parallel()(joblib.delayed(square)(x) for x in range(20000))
    assert out == [x * x for x in range(20000)]
    assert 0 < Counting.submitted < 20000 / 4


def test_parallel_context_reuses_the_backend_across_calls_and_errors():
    with joblib.Parallel(n_jobs=2, backend="cyjob") as parallel:
        for _ in range(3):
            assert parallel(joblib.delayed(square)(x) for x in range(300)) == [
                x * x for x in range(300)]
        with pytest.raises(KeyError):
            parallel(joblib.delayed(fail_on)(x, 5) for x in range(50))
        assert parallel(joblib.delayed(square)(x) for x in range(10)) == [
            x * x for x in range(10)]
