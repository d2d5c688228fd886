"""The thread pool's submit primitive (cyjob._pool), used by the joblib bridge."""

import threading

import pytest

from cyjob._pool import ThreadPool, in_worker_thread
from cyjob.exceptions import PoolShutdownError


@pytest.fixture
def pool():
    pool = ThreadPool(2, name="cyjob-test-pool")
    yield pool
    pool.shutdown(wait=True, timeout=5)


def test_submit_runs_the_function_in_a_worker_then_the_callback(pool):
    done = threading.Event()
    seen = []

    def callback(job):
        seen.append((job.result, job.error, job.duration_ns >= 0,
                     threading.current_thread().name, in_worker_thread()))
        done.set()

    job = pool.submit(lambda: 6 * 7, callback)
    assert done.wait(10)
    result, error, timed, thread, in_worker = seen[0]
    assert (result, error, timed, in_worker) == (42, None, True, True)
    assert thread.startswith("cyjob-test-pool-")
    assert job.result == 42 and job.fn is None and job.callback is None


def test_submit_reports_the_error_of_the_function(pool):
    done = threading.Event()
    job = pool.submit(lambda: 1 / 0, lambda job: done.set())
    assert done.wait(10)
    assert isinstance(job.error, ZeroDivisionError) and job.result is None


def test_a_cancelled_job_never_runs(pool):
    gate, ran = threading.Event(), []
    # Both workers wait on the gate, so the third job stays queued.
    blockers = [pool.submit(gate.wait) for _ in range(2)]
    job = pool.submit(lambda: ran.append(1), lambda job: ran.append("callback"))
    assert job.cancel() is True
    assert job.cancel() is False  # claimed once, by whoever came first
    gate.set()
    done = threading.Event()
    pool.submit(done.set)
    assert done.wait(10)
    assert ran == [] and all(b.error is None for b in blockers)


def test_work_queued_at_shutdown_fails_and_a_closed_pool_runs_in_the_caller():
    pool = ThreadPool(1, name="cyjob-test-pool")
    gate = threading.Event()
    pool.submit(gate.wait)
    failed = []
    queued = pool.submit(lambda: "never", failed.append)
    closer = threading.Thread(target=pool.shutdown, kwargs={"timeout": 5})
    closer.start()
    while not pool.closed:
        pass
    gate.set()
    closer.join(10)
    assert failed == [queued] and isinstance(queued.error, PoolShutdownError)
    late = pool.submit(threading.get_ident)
    assert late.result == threading.get_ident()
