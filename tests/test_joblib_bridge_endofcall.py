"""The end of a bridged call: batches that start when the call's workers go
idle may use the idle CPUs for their OpenMP threads (cyjob/_endofcall.py)."""

import os
import time

import pytest

from cyjob import _endofcall
from cyjob._endofcall import contended, end_of_call_threads, user_ceiling

MS = 1e6

# -- the rule, on figures --------------------------------------------------------


def test_the_last_fold_alone_gets_every_cpu():
    # cross_val_score, 5 folds on 2 workers, 2 CPUs: fold 5 starts when
    # folds 1-4 have ended (~140 ms each).
    assert end_of_call_threads(2, 1, 2, False, [], 140 * MS, False) == (2, False)
    # 8 CPUs, n_jobs=2: each batch ran on 4; the last one alone gets 8.
    assert end_of_call_threads(8, 4, 8, False, [], 140 * MS, False) == (8, False)


def test_a_batch_in_the_middle_of_a_call_keeps_the_cap():
    # Batches still wait to start (or joblib may still submit some).
    assert end_of_call_threads(2, 1, 2, True, [], 140 * MS, False) == (1, False)
    assert end_of_call_threads(8, 2, 8, True, [50 * MS], 140 * MS, False) == (2, False)


def test_running_batches_share_the_idle_cpus():
    # 8 CPUs, n_jobs=4 (cap 2): the last batch starts beside two others
    # that run on: 8 // 3 = 2, no more than the cap; beside one: 4.
    assert end_of_call_threads(8, 2, 8, False, [90 * MS, 80 * MS], 100 * MS,
                               False) == (2, False)
    assert end_of_call_threads(8, 2, 8, False, [90 * MS], 100 * MS, False) == (4, False)
    # 2 CPUs: the other worker's fold has 50 ms left of 140: start on one.
    assert end_of_call_threads(2, 1, 2, False, [50 * MS], 140 * MS, False) == (1, False)
    # A batch whose remaining time is unknown (on threads) runs on.
    assert end_of_call_threads(2, 1, 2, False, [None], 140 * MS, False) == (1, False)


def test_a_batch_waits_for_the_ones_about_to_end():
    # The other worker's fold ends in 3 ms (or is overdue): wait for it,
    # then take both CPUs.
    assert end_of_call_threads(2, 1, 2, False, [3 * MS], 140 * MS, False) == (1, True)
    assert end_of_call_threads(2, 1, 2, False, [-5 * MS], 140 * MS, False) == (1, True)
    # Waiting would give nothing more: the user's ceiling is the cap.
    assert end_of_call_threads(2, 1, 1, False, [3 * MS], 140 * MS, False) == (1, False)
    # 8 CPUs, cap 2: one of two others ends soon, the other runs on:
    # 8 // 3 = 2 now, 8 // 2 = 4 once it ended: worth the wait.
    assert end_of_call_threads(8, 2, 8, False, [2 * MS, 90 * MS], 100 * MS,
                               False) == (2, True)


def test_user_limits_and_the_cpus_bound_it():
    # inner_max_num_threads / OMP_NUM_THREADS / threadpoolctl of 1: never more.
    assert end_of_call_threads(2, 1, 1, False, [], 140 * MS, False) == (1, False)
    # A ceiling of 3 on 8 CPUs with a cap of 2: 3, not 8.
    assert end_of_call_threads(8, 2, 3, False, [], 140 * MS, False) == (3, False)
    # A ceiling above the CPUs: the CPUs.
    assert end_of_call_threads(4, 2, 64, False, [], 140 * MS, False) == (4, False)
    # The user's inner_max_num_threads above CPUs / n_jobs is the cap itself.
    assert end_of_call_threads(8, 6, 6, False, [], 140 * MS, False) == (6, False)


def test_short_unknown_or_contended_batches_keep_the_cap():
    assert end_of_call_threads(2, 1, 2, False, [], None, False) == (1, False)
    assert end_of_call_threads(2, 1, 2, False, [], 2 * MS, False) == (1, False)
    # Other programs want the CPUs: an OpenMP team sharing a CPU with them
    # spins at every barrier.
    assert end_of_call_threads(2, 1, 2, False, [], 140 * MS, True) == (1, False)


def test_contended_reads_the_workers_waits_for_a_cpu():
    before = {10: (1_000 * MS, 5 * MS), 11: (900 * MS, 4 * MS)}
    # 280 ms of run, 4 ms of wait between them: a quiet machine.
    quiet = {10: (1_140 * MS, 6 * MS), 11: (1_040 * MS, 7 * MS)}
    assert not contended(before, quiet)
    # 280 ms of run, 250 ms waiting for a CPU: another program ran.
    busy = {10: (1_140 * MS, 130 * MS), 11: (1_040 * MS, 129 * MS)}
    assert contended(before, busy)
    # Too little run time (or a worker replaced since) says nothing: no raise.
    assert contended(before, {10: (1_005 * MS, 5 * MS)})
    assert contended(before, {12: (5_000 * MS, 0)})


def test_runnable_now_counts_the_caller():
    if not os.path.exists("/proc/loadavg"):
        pytest.skip("no /proc/loadavg")
    assert _endofcall.runnable_now() >= 1


def test_user_ceiling(monkeypatch):
    cpus = _endofcall.cpu_count()
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("OMP_THREAD_LIMIT", raising=False)
    assert user_ceiling(None, ()) == cpus
    assert user_ceiling(1, ()) == 1
    # The calling thread's OpenMP limit (threadpoolctl's, or the variables').
    assert user_ceiling(None, [(None, None, lambda: 1)]) == 1
    monkeypatch.setenv("OMP_NUM_THREADS", "1,1")  # nested levels: the outer one
    assert user_ceiling(None, ()) == 1
    monkeypatch.setenv("OMP_NUM_THREADS", "not a number")
    assert user_ceiling(None, ()) == cpus
    monkeypatch.setenv("OMP_THREAD_LIMIT", "1")
    assert user_ceiling(None, ()) == 1


# -- real scikit-learn and threadpoolctl, through joblib --------------------------

joblib = pytest.importorskip("joblib")

import cyjob  # noqa: E402

cyjob.register_joblib_backend()


def openmp_at_start(folder, name, wait_for=(), then=0.0):
    """The OpenMP threads scikit-learn sizes its loops by, read as the task
    starts; then wait for the files of ``wait_for`` (tasks that started)
    and sleep ``then`` seconds."""
    from sklearn.utils._openmp_helpers import _openmp_effective_n_threads

    n = _openmp_effective_n_threads()
    open(os.path.join(folder, name), "w").close()
    deadline = time.monotonic() + 30
    while not all(os.path.exists(os.path.join(folder, w)) for w in wait_for):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{name}: {wait_for} never started")
        time.sleep(0.001)
    time.sleep(then)
    return name, n, os.getpid()


def end_of_call(folder, last_ends_after=0.0):
    """5 tasks on 2 workers: a0 a1 side by side, then b0 b1 side by side
    (they end together, or b1 ``last_ends_after`` s after b0), then c,
    the last one: it starts when b0 ends."""
    return [
        joblib.delayed(openmp_at_start)(folder, "a0", then=0.05),
        joblib.delayed(openmp_at_start)(folder, "a1", then=0.05),
        joblib.delayed(openmp_at_start)(folder, "b0", ["b1"], then=0.05),
        joblib.delayed(openmp_at_start)(folder, "b1", ["b0"], then=0.05 + last_ends_after),
        joblib.delayed(openmp_at_start)(folder, "c"),
    ]


@pytest.fixture
def quiet(monkeypatch):
    """The end-of-call rule as on a quiet machine (the test cannot make the
    machine quiet; ``contended`` is tested on figures above, and so is
    ``runnable_now``), and a batch
    may wait for the ones about to end up to 20 times its expected time
    (the test's tasks end within milliseconds of each other, but a loaded
    machine may stretch that)."""
    pytest.importorskip("sklearn")
    pytest.importorskip("threadpoolctl")
    monkeypatch.setattr(_endofcall.EndOfCall, "contended", lambda self: False)
    monkeypatch.setattr(_endofcall, "runnable_now", lambda at_most: 1)
    monkeypatch.setattr(_endofcall, "HOLD_FRACTION", 20.0)
    # The user's limits are the tests' to set (another test's library may
    # have left OMP_NUM_THREADS=1 in os.environ, or a limit of 1 on this
    # thread's OpenMP).
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("OMP_THREAD_LIMIT", raising=False)
    if cyjob.cpu_count() < 2:
        pytest.skip("one CPU: nothing to raise")
    from threadpoolctl import threadpool_limits

    with threadpool_limits(cyjob.cpu_count(), user_api="openmp"):
        yield


def caller_openmp():
    """The calling thread's OpenMP limit, as threadpoolctl reads it."""
    from threadpoolctl import threadpool_info

    return min(info["num_threads"] for info in threadpool_info()
               if info["user_api"] == "openmp")


def run_end_of_call(tasks, **config):
    with joblib.parallel_config(backend="cyjob", n_jobs=2, prefer="processes", **config):
        out = joblib.Parallel(batch_size=1, pre_dispatch="all")(tasks)
    assert {pid for _, _, pid in out}.isdisjoint({os.getpid()})
    return {name: n for name, n, _ in out}


def test_the_last_task_sees_the_idle_cpus_and_the_others_do_not(quiet, tmp_path):
    cpus = cyjob.cpu_count()
    base = max(cpus // 2, 1)
    top = min(cpus, caller_openmp())
    if top <= base:
        pytest.skip("the caller's OpenMP limit leaves nothing to raise")
    seen = run_end_of_call(end_of_call(str(tmp_path)))
    # a0 a1 b0 b1 started while tasks waited to start: the call's cap.
    assert [seen[k] for k in ("a0", "a1", "b0", "b1")] == [base] * 4, seen
    # c waited for b1 (about to end), then started alone: every CPU.
    assert seen["c"] == top, seen
    # The workers' cap is back for the next call's batches.
    again = run_end_of_call([joblib.delayed(openmp_at_start)(str(tmp_path), f"d{i}", [])
                             for i in range(2)])
    assert set(again.values()) == {base}, again


def test_a_batch_held_for_a_batch_that_does_not_end_starts_with_the_cap(
        quiet, tmp_path, monkeypatch):
    # b1 runs 1 s past b0; c may wait for it only 0.1 x its expected ~50 ms.
    monkeypatch.setattr(_endofcall, "HOLD_FRACTION", 0.1)
    base = max(cyjob.cpu_count() // 2, 1)
    started = time.monotonic()
    seen = run_end_of_call(end_of_call(str(tmp_path), last_ends_after=1.0))
    assert seen["c"] == base, seen
    assert time.monotonic() - started < 20  # the held batch was not forgotten


@pytest.mark.parametrize("limit", ["inner_max_num_threads", "threadpoolctl",
                                   "OMP_NUM_THREADS"])
def test_the_users_limit_is_never_raised(quiet, tmp_path, monkeypatch, limit):
    from threadpoolctl import threadpool_limits

    if limit == "inner_max_num_threads":
        seen = run_end_of_call(end_of_call(str(tmp_path)), inner_max_num_threads=1)
    elif limit == "threadpoolctl":
        with threadpool_limits(1, user_api="openmp"):
            seen = run_end_of_call(end_of_call(str(tmp_path)))
    else:
        monkeypatch.setenv("OMP_NUM_THREADS", "1")
        seen = run_end_of_call(end_of_call(str(tmp_path)))
    assert set(seen.values()) == {1}, seen
