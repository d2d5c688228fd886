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


# --------------------------------------------------------------------------
# routing like cyjob.Parallel's default backend (issue 15)

import functools  # noqa: E402
import os  # noqa: E402
import warnings  # noqa: E402

import numpy as np  # noqa: E402

from cyjob.backends.auto import memo  # noqa: E402
from cyjob.bench import calibrate_gil_work, gil_work  # noqa: E402


@functools.lru_cache(maxsize=None)
def gil_n():
    return calibrate_gil_work(0.004)


def gil_where(n, x):
    """~4 ms of pure Python holding the GIL; where it ran."""
    return gil_work(n) + x, os.getpid(), threading.current_thread().name


def sin_where(a, x):
    return float(np.sin(a).sum()) + x, os.getpid(), threading.current_thread().name


def tiny_where(x):
    return x + 1, os.getpid(), threading.current_thread().name


def sklearn_assume_finite(x):
    import sklearn

    return sklearn.get_config()["assume_finite"], os.getpid()


def warn_and_return(x):
    warnings.warn(f"task {x} warns", UserWarning)
    return x


def blas_threads(x):
    from threadpoolctl import threadpool_info

    return [info["num_threads"] for info in threadpool_info()], os.getpid()


def memmap_name(a, x):
    return getattr(a, "filename", None), type(a).__name__, os.getpid()


@pytest.fixture
def fresh_memo():
    memo.clear()
    yield
    memo.clear()


def routed(capsys, tasks, expected, attempts=4, **kwargs):
    """Run ``tasks`` through joblib on the cyjob backend, measured afresh,
    until the routing line says ``expected`` (a loaded machine can hide GIL
    release or contention for a while); return results and the lines."""
    for _ in range(attempts):
        memo.clear()
        capsys.readouterr()
        with joblib.parallel_config(backend="cyjob", n_jobs=2, verbose=10, **kwargs):
            out = joblib.Parallel()(tasks())
        err = "".join(capsys.readouterr())
        lines = [line.split("cyjob: using ", 1)[1] for line in err.splitlines()
                 if "cyjob: using " in line]
        if lines and lines[0].startswith(expected + ":") and len(lines) == 1:
            return out, lines
    pytest.skip(f"machine too busy to see {expected!r} ({lines})")


def test_gil_bound_batches_go_to_worker_processes(capsys, fresh_memo):
    n = gil_n()
    with joblib.parallel_config(backend="cyjob", n_jobs=2, prefer="processes"):
        joblib.Parallel()(joblib.delayed(abs)(-x) for x in range(4))  # a warm pool
    out, lines = routed(capsys, lambda: (joblib.delayed(gil_where)(n, x) for x in range(120)),
                        "processes")
    assert [r[0] for r in out] == [gil_work(n) + x for x in range(120)]
    # The probe's batches ran on threads; the end of the call in processes.
    pids = [pid for _, pid, _ in out]
    assert pids[-1] != os.getpid() and sum(pid != os.getpid() for pid in pids) >= 20, lines
    assert "hold the GIL" in lines[0]


def test_gil_releasing_batches_stay_on_threads(capsys, fresh_memo):
    a = np.random.default_rng(0).random(1_000_000)
    out, lines = routed(capsys, lambda: (joblib.delayed(sin_where)(a, x) for x in range(16)),
                        "threading")
    assert {pid for _, pid, _ in out} == {os.getpid()}
    assert [r[0] for r in out] == [float(np.sin(a).sum()) + x for x in range(16)]


def test_tiny_batches_run_inline(capsys, fresh_memo):
    """Tiny work runs batch after batch in one thread, with no hand-off:
    the thread that dispatches the next batch runs it (joblib dispatches
    from the completion callback of the previous one)."""
    out, lines = routed(capsys, lambda: (joblib.delayed(tiny_where)(x) for x in range(20000)),
                        "inline")
    assert [r[0] for r in out] == [x + 1 for x in range(20000)]
    assert {pid for _, pid, _ in out} == {os.getpid()}
    names = [name for _, _, name in out]
    assert max(names.count(name) for name in set(names)) >= 15000


def _tasks_then_input_error(n_tasks):
    for x in range(n_tasks):
        yield joblib.delayed(tiny_where)(x)
    raise RuntimeError("the input broke")


@pytest.mark.timeout(60)
@pytest.mark.parametrize("pre_dispatch", ["all", "2*n_jobs"])
def test_an_error_of_the_input_is_raised_when_every_batch_ran_inline(fresh_memo, pre_dispatch):
    """Batches run inline are done before joblib's retrieval loop starts; an
    error raised by the input must still reach the caller, not an empty list."""
    memo.put(tiny_where, ("inline", 1e3, 1e3))
    with pytest.raises(RuntimeError, match="the input broke"):
        joblib.Parallel(n_jobs=2, backend="cyjob", pre_dispatch=pre_dispatch)(
            _tasks_then_input_error(50))


@pytest.mark.parametrize("hint, where", [({"require": "sharedmem"}, "threads"),
                                         ({"prefer": "threads"}, "threads"),
                                         ({"prefer": "processes"}, "processes")])
def test_joblib_hints_win_over_measurement(fresh_memo, hint, where):
    if where == "threads":
        tasks = [joblib.delayed(gil_where)(gil_n(), x) for x in range(20)]
    else:
        tasks = [joblib.delayed(tiny_where)(x) for x in range(200)]
    with joblib.parallel_config(backend="cyjob", n_jobs=2, **hint):
        out = joblib.Parallel()(tasks)
    pids = {pid for _, pid, _ in out}
    if where == "threads":
        assert pids == {os.getpid()}
        assert all(name.startswith("cyjob-worker") for _, _, name in out)
    else:
        assert os.getpid() not in pids
    assert memo.get(gil_where) is None and memo.get(tiny_where) is None


def test_sklearn_config_reaches_worker_processes():
    """Plain joblib.delayed (scikit-learn's own wrapper not involved): the
    caller's sklearn.config_context is in force in the worker process."""
    sklearn = pytest.importorskip("sklearn")
    with sklearn.config_context(assume_finite=True):
        with joblib.parallel_config(backend="cyjob", n_jobs=2, prefer="processes"):
            out = joblib.Parallel()(joblib.delayed(sklearn_assume_finite)(x) for x in range(6))
    assert all(value is True for value, _ in out), out
    assert os.getpid() not in {pid for _, pid in out}
    with joblib.parallel_config(backend="cyjob", n_jobs=2, prefer="processes"):
        out = joblib.Parallel()(joblib.delayed(sklearn_assume_finite)(x) for x in range(6))
    assert all(value is False for value, _ in out), out


def test_warning_filters_reach_worker_processes():
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        with joblib.parallel_config(backend="cyjob", n_jobs=2, prefer="processes"):
            with pytest.raises(UserWarning, match=r"task \d warns"):
                joblib.Parallel(batch_size=1)(joblib.delayed(warn_and_return)(x)
                                              for x in range(3, 6))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        with joblib.parallel_config(backend="cyjob", n_jobs=2, prefer="processes"):
            assert joblib.Parallel()(joblib.delayed(warn_and_return)(x)
                                     for x in range(4)) == [0, 1, 2, 3]


def test_blas_threads_are_capped_in_worker_processes():
    pytest.importorskip("threadpoolctl")
    cap = max(cyjob.cpu_count() // 2, 1)
    with joblib.parallel_config(backend="cyjob", n_jobs=2, prefer="processes"):
        out = joblib.Parallel()(joblib.delayed(blas_threads)(x) for x in range(4))
    assert os.getpid() not in {pid for _, pid in out}
    for counts, _ in out:
        assert counts and all(c <= cap for c in counts), counts


def openmp_threads(x):
    from sklearn.utils._openmp_helpers import _openmp_effective_n_threads

    return _openmp_effective_n_threads(), threading.current_thread().name


def test_openmp_is_capped_per_worker_thread_and_restored():
    """Batches on threads start OpenMP regions of at most CPUs / n_jobs
    threads (what scikit-learn sizes its loops by); the caller's limit, and
    the worker threads' own once the call is over, are left as they were."""
    pytest.importorskip("threadpoolctl")
    pytest.importorskip("sklearn")
    if cyjob.cpu_count() < 2:
        pytest.skip("one CPU: nothing to cap")
    before, _ = openmp_threads(0)
    cap = max(cyjob.cpu_count() // 2, 1)
    with joblib.parallel_config(backend="cyjob", n_jobs=2, prefer="threads"):
        out = joblib.Parallel(batch_size=1)(joblib.delayed(openmp_threads)(x)
                                            for x in range(8))
    assert {n for n, _ in out} == {min(cap, before)}
    assert all(name.startswith("cyjob-worker") for _, name in out)
    assert openmp_threads(0)[0] == before
    # The same worker threads, outside a joblib call: their own limit again.
    after = cyjob.Parallel(n_jobs=2, backend="threading", batch_size=1)(
        cyjob.delayed(openmp_threads)(x) for x in range(8))
    assert {n for n, _ in after} == {before}


@pytest.mark.parametrize("bad", ["x", 0, -2, 2.5, True])
def test_a_bad_inner_max_num_threads_is_a_clear_error_before_any_task_runs(bad):
    ran = []
    with joblib.parallel_config(backend="cyjob", n_jobs=2, inner_max_num_threads=bad):
        with pytest.raises(ValueError, match="inner_max_num_threads must be None or a positive"):
            joblib.Parallel()(joblib.delayed(ran.append)(x) for x in range(4))
    assert ran == []


def test_inner_max_num_threads_sets_the_openmp_cap_on_threads():
    pytest.importorskip("threadpoolctl")
    pytest.importorskip("sklearn")
    before, _ = openmp_threads(0)
    if before < 2:
        pytest.skip("OpenMP runs one thread here: nothing to cap")
    with joblib.parallel_config(backend="cyjob", n_jobs=2, prefer="threads",
                                inner_max_num_threads=1):
        out = joblib.Parallel(batch_size=1)(joblib.delayed(openmp_threads)(x)
                                            for x in range(4))
    assert {n for n, _ in out} == {1}


def test_a_large_array_is_memory_mapped_once_per_joblib_call(tmp_path):
    """An 8 MB array carried by 20 batches reaches the workers as one
    memory-mapped file (joblib's loky dumps it once per batch), removed
    when the call ends."""
    a = np.random.default_rng(0).random(1_000_000)
    with joblib.parallel_config(backend="cyjob", n_jobs=2, prefer="processes",
                                temp_folder=str(tmp_path)):
        out = joblib.Parallel(batch_size=1)(joblib.delayed(memmap_name)(a, x)
                                            for x in range(20))
    names = {name for name, _, _ in out}
    assert len(names) == 1 and None not in names, names
    assert {kind for _, kind, _ in out} == {"memmap"}
    assert os.getpid() not in {pid for _, _, pid in out}
    assert not os.path.exists(names.pop())


class Heavy:
    """An argument costly to pickle, counting how often the caller pickles it."""

    pickled = 0

    def __init__(self, items):
        self.items = items

    def __reduce__(self):
        Heavy.pickled += 1
        return (Heavy, (self.items,))


def busy_with(heavy, x):
    # 20 ms of wall time, busy: the batch sizer reads wall time, and a task
    # of 20 ms of CPU time lasted 100+ ms on a loaded machine, too long for
    # two of them to fit the 0.2 s cap on a payload-sized batch.
    deadline = time.monotonic() + 0.02
    while time.monotonic() < deadline:
        pass
    return x + len(heavy.items)


def test_process_batches_grow_when_each_one_carries_a_costly_object():
    """A fitted model sent with every task (permutation_importance) costs
    its pickling once per batch: batches then hold several tasks, and the
    object is pickled fewer times than there are tasks (joblib's loky
    pickles it for each one)."""
    heavy = Heavy([(i, str(i)) for i in range(50_000)])
    Heavy.pickled = 0
    with joblib.parallel_config(backend="cyjob", n_jobs=2, prefer="processes"):
        out = joblib.Parallel()(joblib.delayed(busy_with)(heavy, x) for x in range(40))
    assert out == [x + 50_000 for x in range(40)]
    assert 0 < Heavy.pickled < 30, Heavy.pickled  # one per task without it


def test_processes_slower_than_threads_move_back_within_the_joblib_call(capsys, fresh_memo):
    """A remembered "processes" choice that runs slower there than the
    probe's threads (recorded at 1 us per task) is corrected to threads."""
    n = gil_n()
    with joblib.parallel_config(backend="cyjob", n_jobs=2, prefer="processes"):
        joblib.Parallel()(joblib.delayed(abs)(-x) for x in range(4))  # a warm pool
    memo.put(gil_where, ("processes", 2e6, 1e3))
    with joblib.parallel_config(backend="cyjob", n_jobs=2, verbose=10):
        out = joblib.Parallel()(joblib.delayed(gil_where)(n, x) for x in range(100))
    err = "".join(capsys.readouterr())
    assert "cyjob: using processes: remembered from an earlier call" in err
    assert "cyjob: using threading: correcting: processes ran" in err
    assert [r[0] for r in out] == [gil_work(n) + x for x in range(100)]
    pids = [pid for _, pid, _ in out]
    assert os.getpid() in pids and any(pid != os.getpid() for pid in pids)
    assert memo.get(gil_where)[0] == "threading"


def test_make_default_makes_joblib_use_cyjob():
    """One line makes every joblib.Parallel (scikit-learn's included) run on
    cyjob, without a parallel_config block."""
    code = ("import cyjob, joblib, threading\n"
            "cyjob.register_joblib_backend(make_default=True)\n"
            "p = joblib.Parallel(n_jobs=2, prefer='threads')\n"
            "names = p(joblib.delayed(lambda: threading.current_thread().name)() "
            "for _ in range(20))\n"
            "assert type(p._backend).__name__ == 'CyjobBackend', p._backend\n"
            "assert all(n.startswith('cyjob-worker') for n in names), names\n")
    env = dict(os.environ)
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


def test_cyjob_parallel_config_reaches_joblib_calls():
    """What joblib leaves open comes from cyjob.parallel_config: n_jobs (a
    library's Parallel with no n_jobs runs on 2 workers), prefer, and the
    backend (sequential: the caller's thread)."""
    with cyjob.parallel_config(n_jobs=2, prefer="threads"):
        names = joblib.Parallel(backend="cyjob")(
            joblib.delayed(gil_where)(1, x) for x in range(40))
    assert {pid for _, pid, _ in names} == {os.getpid()}
    assert all(name.startswith("cyjob-worker") for _, _, name in names), names
    with cyjob.parallel_config(backend="sequential"):
        names = joblib.Parallel(n_jobs=2, backend="cyjob")(
            joblib.delayed(thread_name)(x) for x in range(10))
    assert set(names) == {threading.current_thread().name}
    with cyjob.parallel_config(backend="processes"):
        out = joblib.Parallel(n_jobs=2, backend="cyjob")(
            joblib.delayed(tiny_where)(x) for x in range(10))
    assert os.getpid() not in {pid for _, pid, _ in out}
    # joblib's own setting wins where both are given.
    with cyjob.parallel_config(n_jobs=2, prefer="processes"):
        with joblib.parallel_config(backend="cyjob", prefer="threads"):
            out = joblib.Parallel()(joblib.delayed(tiny_where)(x) for x in range(10))
    assert {pid for _, pid, _ in out} == {os.getpid()}


# -- the bridge's extra rule on probe figures (no wall clock) -------------------

from cyjob.backends._probe import BatchFigures, decide  # noqa: E402
from cyjob.joblib_bridge import _mixed_verdict  # noqa: E402

# Recorded by the bridge on threads (2 CPUs, loaded machine): permutation_importance
# of a 50-tree forest, two overlapping batches of one task each.
PERMUTATION = [(12163779404479, 12163832234596, 41921443, 1, 118, 14, 88962),
               (12163779379202, 12163837040582, 41889850, 1, 143, 4, 86128)]
# HistGradientBoosting cross_val_score (OpenMP capped at one thread per
# worker thread), four batches shaped from a logged window's totals: 706 ms
# of CPU in 505 ms, 115 GIL waits per 10 ms of CPU.
HGB = [(0, 250_000_000, 176_000_000, 1, 2030, 60, 0),
       (0, 252_000_000, 177_000_000, 1, 2040, 55, 0),
       (252_000_000, 505_000_000, 177_000_000, 1, 2030, 62, 0),
       (250_000_000, 500_000_000, 176_000_000, 1, 2000, 58, 0)]


# The same, on a machine loaded enough that the two threads got under one
# CPU between them (0.8): still mixed work, not waiting.
HGB_LOADED = [(start, start + 2 * (finish - start), cpu, n, vol, inv, waited)
              for start, finish, cpu, n, vol, inv, waited in HGB]


@pytest.mark.parametrize("rows", [PERMUTATION, HGB, HGB_LOADED],
                         ids=["permutation", "hgb", "hgb-loaded"])
def test_threads_that_wait_for_the_gil_often_go_to_processes(rows):
    batches = [BatchFigures(*row) for row in rows]
    verdict = _mixed_verdict(batches, 2)
    assert verdict is not None and verdict.kind == "processes" and verdict.remember
    assert "waited for the GIL" in verdict.reason
    assert _mixed_verdict(batches, 1) is None  # one worker: nothing to compare


def test_recorded_numpy_and_sleeping_probes_stay_on_threads():
    """The probes test_probe.py records for GIL-free numpy and sleeping
    tasks (idle and loaded machines) are not taken for mixed work."""
    from test_probe import IDLE, LOADED

    checked = 0
    for records in (IDLE, LOADED):
        for name, rows in records.items():
            batches = [BatchFigures(*row) for row in rows]
            if decide(batches, 2).kind == "threading":
                assert _mixed_verdict(batches, 2) is None, name
                checked += 1
    assert checked >= 8


def test_small_or_sequential_batches_are_not_mixed_work():
    tiny = [BatchFigures(0, 60_000, 40_000, 1, 30, 0, 0),
            BatchFigures(0, 60_000, 40_000, 1, 30, 0, 0)]  # 40 us of CPU per task
    one_after_another = [BatchFigures(0, 100_000_000, 95_000_000, 1, 400, 5, 0),
                         BatchFigures(100_000_000, 200_000_000, 95_000_000, 1, 400, 5, 0)]
    assert _mixed_verdict(tiny, 2) is None
    assert _mixed_verdict(one_after_another, 2) is None
