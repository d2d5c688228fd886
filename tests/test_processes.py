"""The process backend ("processes", "loky", "multiprocessing"): results,
pickling, shared arrays, worker environment, nesting, and every failure mode.

Worker processes are children of cyjob's fork server, not of the test
process: tests find them through the pids the tasks report.
"""

import os
import pickle
import signal
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest

import cyjob
from cyjob import Parallel, TerminatedWorkerError, delayed, parallel_config
from cyjob.backends.processes import THREAD_LIMIT_VARS
from helpers import descendants

SRC = os.path.dirname(os.path.dirname(os.path.abspath(cyjob.__file__)))
pytestmark = pytest.mark.timeout(60)


def P(**kwargs):
    kwargs.setdefault("n_jobs", 2)
    kwargs.setdefault("backend", "processes")
    return Parallel(**kwargs)


# --------------------------------------------------------------------------
# helpers run in the workers (module-level: importable there)


def square(x):
    return x * x


def pid_of(_=None):
    return os.getpid()


def pid_after_nap(_=None):
    # Long enough that one worker cannot take every batch of a call before
    # the next batch is placed, so each call visits every worker.
    time.sleep(0.02)
    return os.getpid()


def fail_on(x, bad):
    if x == bad:
        raise ValueError(f"task {x} failed on purpose")
    return x


def exit_with(code):
    os._exit(code)


def kill_self(signum):
    os.kill(os.getpid(), signum)
    time.sleep(10)


def segfault():
    import ctypes

    ctypes.string_at(0)


def record_pid_and_sleep(folder, seconds):
    with open(os.path.join(folder, str(os.getpid())), "w"):
        pass
    time.sleep(seconds)


def return_lock(_):
    return threading.Lock()


def describe_array(a):
    return (type(a).__name__, bool(a.flags.writeable), getattr(a, "filename", None),
            float(a.sum()))


def write_at(m, i):
    m[i] = i + 1


def env_of(names):
    return {name: os.environ.get(name) for name in names}


def nested_sum(n):
    inner = Parallel(n_jobs=2, backend="processes")(delayed(pid_of)(i) for i in range(n))
    return sorted(set(inner)) == [os.getpid()], len(inner)


class CustomError(Exception):
    pass


def raise_custom():
    raise CustomError("custom")


def alive(pid):
    """True while ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def wait_dead(pids, seconds=10.0):
    """The pids still alive after waiting up to ``seconds`` for them to go."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        left = [p for p in pids if alive(p)]
        if not left:
            return []
        time.sleep(0.02)
    return [p for p in pids if alive(p)]


def wait_files(folder, n, seconds=20.0):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        names = os.listdir(folder)
        if len(names) >= n:
            return [int(x) for x in names]
        time.sleep(0.01)
    raise AssertionError(f"only {os.listdir(folder)} of {n} tasks started")


def run_script(code, *args, timeout=40, **kwargs):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (SRC, env.get("PYTHONPATH")) if p)
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code), *map(str, args)],
                          env=env, capture_output=True, text=True, timeout=timeout, **kwargs)


# --------------------------------------------------------------------------
# results


def test_backend_names_and_prefer_select_processes():
    main = os.getpid()
    for name in ("processes", "loky", "multiprocessing"):
        pids = P(backend=name)(delayed(pid_of)(i) for i in range(4))
        assert main not in pids
    assert main not in Parallel(n_jobs=2, prefer="processes")(delayed(pid_of)() for _ in range(2))
    with parallel_config(backend="loky", n_jobs=2):
        assert main not in Parallel()(delayed(pid_of)() for _ in range(2))


def test_results_equal_joblib():
    joblib = pytest.importorskip("joblib")
    cases = [
        ([(square, (x,), {}) for x in range(50)], {}),
        ([(divmod, (x, 7), {}) for x in range(30)], {"batch_size": 4}),
        ([(sorted, ([3, 1, x],), {"reverse": True}) for x in range(10)], {}),
        ([(np.arange, (x,), {"dtype": np.int32}) for x in range(5)], {}),
    ]
    for tasks, kwargs in cases:
        ours = P(**kwargs)(tasks)
        theirs = joblib.Parallel(n_jobs=2, backend="loky", **kwargs)(
            joblib.delayed(f)(*a, **k) for f, a, k in tasks)
        # Each result pickled on its own: a pickle of the whole list also
        # records which results share an object (the arrays unpickled from
        # one batch share their dtype), i.e. how the tasks were batched,
        # which auto batching decides from timings.
        assert type(ours) is type(theirs) is list
        assert [pickle.dumps(r) for r in ours] == [pickle.dumps(r) for r in theirs]


def test_lambdas_closures_and_local_classes():
    offset = 10

    def add_offset(x):
        return x + offset

    class Box:
        def __init__(self, v):
            self.v = v

    assert P()(delayed(lambda x: x * 3)(i) for i in range(5)) == [0, 3, 6, 9, 12]
    assert P()(delayed(add_offset)(i) for i in range(3)) == [10, 11, 12]
    boxes = P()(delayed(Box)(i) for i in range(3))
    assert [b.v for b in boxes] == [0, 1, 2]


def test_functions_of_main_script_without_guard(tmp_path):
    # No `if __name__ == "__main__"`: workers never re-run the main script.
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent("""
        from cyjob import Parallel, delayed
        def cube(x):
            return x ** 3
        print(Parallel(n_jobs=2, backend="loky")(delayed(cube)(i) for i in range(4)))
    """))
    env = dict(os.environ, PYTHONPATH=SRC)
    out = subprocess.run([sys.executable, str(script)], env=env, capture_output=True,
                         text=True, timeout=40)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[0, 1, 8, 27]"


def test_pool_reused_across_calls_and_parallel_objects():
    first = set(P()(delayed(pid_after_nap)(i) for i in range(20)))
    second = set(P(batch_size=1)(delayed(pid_after_nap)(i) for i in range(20)))
    assert len(first) == 2 and first == second


def test_generators_and_unordered():
    gen = P(return_as="generator")(delayed(square)(i) for i in range(100))
    assert list(gen) == [i * i for i in range(100)]
    unordered = P(return_as="generator_unordered")(delayed(square)(i) for i in range(100))
    assert sorted(unordered) == [i * i for i in range(100)]


def test_concurrent_calls_with_different_n_jobs():
    errors = []

    def run(n_jobs):
        try:
            for _ in range(5):
                out = P(n_jobs=n_jobs)(delayed(square)(x) for x in range(40))
                assert out == [x * x for x in range(40)]
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(n,)) for n in (2, 3, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(50)
    assert errors == []
    # The pool follows the last n_jobs: retired workers leave.
    P(n_jobs=3)(delayed(square)(x) for x in range(6))
    P(n_jobs=2)(delayed(square)(x) for x in range(6))
    deadline = time.monotonic() + 10
    while len(_cyjob_processes()) != 3 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert len(_cyjob_processes()) == 3  # the fork server and 2 workers


# --------------------------------------------------------------------------
# errors in tasks and in pickling


def test_task_exception_keeps_type_and_remote_traceback():
    with pytest.raises(ValueError, match="task 7 failed on purpose") as info:
        P()(delayed(fail_on)(i, 7) for i in range(20))
    cause = str(info.value.__cause__)
    assert "Traceback" in cause and "fail_on" in cause
    with pytest.raises(CustomError):
        P()(delayed(raise_custom)() for _ in range(2))
    assert P()(delayed(square)(i) for i in range(4)) == [0, 1, 4, 9]


def test_unpicklable_argument_says_which():
    tasks = [delayed(square)(1), delayed(square)(threading.Lock())]
    with pytest.raises(pickle.PicklingError, match="argument 0 of task 1") as info:
        P(batch_size=2)(tasks)
    assert "lock" in str(info.value)
    assert P()(delayed(square)(i) for i in range(4)) == [0, 1, 4, 9]


def test_unpicklable_result_says_which():
    with pytest.raises(pickle.PicklingError, match=r"result of task [01] \(function return_lock\)"):
        P()(delayed(return_lock)(i) for i in range(2))
    assert P()(delayed(square)(i) for i in range(4)) == [0, 1, 4, 9]


# --------------------------------------------------------------------------
# dying workers


@pytest.mark.parametrize("func, args, expected", [
    (exit_with, (3,), "exit code 3"),
    (kill_self, (signal.SIGKILL,), "SIGKILL"),
    (kill_self, (signal.SIGTERM,), "SIGTERM"),
    (segfault, (), "SIGSEGV"),
])
@pytest.mark.timeout(30)
def test_dead_worker_raises_terminated_worker_error(func, args, expected):
    tasks = [delayed(square)(i) for i in range(4)] + [delayed(func)(*args)]
    with pytest.raises(TerminatedWorkerError, match=expected):
        P()(tasks)
    # The next call gets a healthy pool.
    assert P()(delayed(square)(i) for i in range(10)) == [i * i for i in range(10)]


@pytest.mark.timeout(60)
def test_initializer_that_fails_does_not_fork_workers_in_a_loop(tmp_path):
    # Each worker started appends a line, then fails in its initializer.
    starts = tmp_path / "starts"
    out = run_script("""
        import sys, time
        from cyjob import Parallel, TerminatedWorkerError, delayed
        def failing_init(path):
            with open(path, "a") as f:
                f.write("start\\n")
            raise ValueError("initializer failed on purpose")
        for _ in range(2):  # the second call, with the same initializer, fails too
            try:
                Parallel(n_jobs=2, backend="loky", initializer=failing_init,
                         initargs=(sys.argv[1],))(delayed(abs)(-i) for i in range(4))
            except TerminatedWorkerError:
                print("failed", flush=True)
            time.sleep(1)  # idle: workers that die as they start are not replaced forever
        print(Parallel(n_jobs=2, backend="loky")(delayed(abs)(-i) for i in range(4)))
    """, starts)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split("\n")[:3] == ["failed", "failed", "[0, 1, 2, 3]"]
    n_starts = len(starts.read_text().split())
    assert n_starts <= 20, f"{n_starts} workers started"


def test_worker_killed_while_idle_is_replaced():
    # The next call comes at once: whether or not the pool has heard of the
    # deaths yet, a batch no dead worker received goes to a live one (a
    # pause here for the pool to hear hid that; on a loaded machine the
    # call failed with TerminatedWorkerError for a task never started).
    for _ in range(5):
        pids = set(P()(delayed(pid_of)(i) for i in range(20)))
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        assert wait_dead(pids) == []
        new = set(P()(delayed(pid_of)(i) for i in range(20)))
        assert new and not new & pids


# --------------------------------------------------------------------------
# stopping a call: time-out, Ctrl-C, abandoned generator


def test_timeout_kills_busy_workers(tmp_path):
    with pytest.raises(cyjob.TimeoutError):
        P(timeout=0.5)(delayed(record_pid_and_sleep)(str(tmp_path), 30) for _ in range(4))
    busy = wait_files(tmp_path, 2)
    assert wait_dead(busy) == []
    assert P()(delayed(square)(i) for i in range(4)) == [0, 1, 4, 9]


def test_abandoned_generator_kills_busy_workers(tmp_path):
    gen = P(return_as="generator")(
        delayed(record_pid_and_sleep)(str(tmp_path), 30) for _ in range(4))
    busy = wait_files(tmp_path, 2)
    gen.close()
    assert wait_dead(busy) == []


@pytest.mark.timeout(60)
def test_ctrl_c_stops_call_and_busy_workers(tmp_path):
    code = """
        import os, sys, time
        from cyjob import Parallel, delayed
        def task(folder):
            open(os.path.join(folder, str(os.getpid())), "w").close()
            time.sleep(60)
        try:
            Parallel(n_jobs=2, backend="processes")(delayed(task)(sys.argv[1]) for _ in range(4))
        except KeyboardInterrupt:
            print("interrupted", flush=True)
        print(Parallel(n_jobs=2, backend="processes")(delayed(abs)(-i) for i in range(3)))
    """
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (SRC, env.get("PYTHONPATH")) if p)
    proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), str(tmp_path)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        busy = wait_files(tmp_path, 2)
        proc.send_signal(signal.SIGINT)
        # Tasks sleep 60 s: an answer well before proves the call was stopped.
        out, err = proc.communicate(timeout=20)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert out.splitlines() == ["interrupted", "[0, 1, 2]"]
    assert wait_dead(busy) == []


def test_exit_leaves_no_worker_processes():
    out = run_script("""
        import os
        from cyjob import Parallel, delayed
        print(sorted(set(Parallel(n_jobs=2, backend="processes")(
            delayed(os.getpid)() for _ in range(20)))))
    """)
    assert out.returncode == 0, out.stderr
    pids = eval(out.stdout)
    assert pids and wait_dead(pids) == []


def test_killed_parent_leaves_no_orphans(tmp_path):
    code = """
        import os, sys, time
        from cyjob import Parallel, delayed
        def task(folder):
            open(os.path.join(folder, str(os.getpid())), "w").close()
            time.sleep(60)
        Parallel(n_jobs=2, backend="processes")(delayed(task)(sys.argv[1]) for _ in range(4))
    """
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (SRC, env.get("PYTHONPATH")) if p)
    proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), str(tmp_path)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        busy = wait_files(tmp_path, 2)
    finally:
        proc.kill()
        proc.wait()
    # The fork server sees its parent go and kills the busy workers.
    assert wait_dead(busy) == []


# --------------------------------------------------------------------------
# large numpy arrays


def test_large_arrays_arrive_as_readonly_memmaps_and_files_go():
    a = np.arange(300_000, dtype=np.float64)  # 2.4 MB > 1M
    out = P()(delayed(describe_array)(a) for _ in range(4))
    kinds, writeable, files, sums = zip(*out)
    assert set(kinds) == {"memmap"} and not any(writeable)
    assert len(set(files)) == 1  # dumped once per call
    assert set(sums) == {float(a.sum())}
    assert not os.path.exists(files[0]) and not os.path.exists(os.path.dirname(files[0]))


def test_temp_files_of_unfinished_calls_go_at_exit():
    out = run_script("""
        import os, time
        import numpy as np
        from cyjob import Parallel, delayed
        def where(a, wait):
            time.sleep(wait)
            return a.filename
        big = np.ones(300_000)
        results = Parallel(n_jobs=2, backend="processes", return_as="generator")(
            delayed(where)(big, i) for i in range(4))
        print(next(results), flush=True)  # exits with the call still running
    """)
    assert out.returncode == 0, out.stderr
    filename = out.stdout.strip()
    assert filename.endswith(".mmap") and not os.path.exists(os.path.dirname(filename))


def test_small_arrays_and_max_nbytes_none_are_pickled():
    a = np.arange(300_000, dtype=np.float64)
    for arr, kwargs in ((a[:1000], {}), (a, {"max_nbytes": None}), (a, {"mmap_mode": None})):
        out = P(**kwargs)(delayed(describe_array)(arr) for _ in range(2))
        assert {(kind, w) for kind, w, _, _ in out} == {("ndarray", True)}
        assert {s for *_, s in out} == {float(arr.sum())}


def test_max_nbytes_temp_folder_and_mode(tmp_path):
    a = np.ones((200, 300), order="F")
    out = P(max_nbytes="10K", temp_folder=str(tmp_path), mmap_mode="r+")(
        delayed(describe_array)(a) for _ in range(2))
    for kind, writeable, filename, total in out:
        assert (kind, writeable, total) == ("memmap", True, 60000.0)
        assert filename.startswith(str(tmp_path))
    assert os.listdir(tmp_path) == []


def sum_after_nap(a, seconds):
    time.sleep(seconds)
    return float(a.sum())


def test_generator_of_a_with_block_still_reads_its_arrays_after_the_block(tmp_path):
    # The block's arrays stay dumped until it ends; a generator call still
    # running then keeps them until it finishes (it has batches in flight
    # that refer to them), and nothing is left after.
    a = np.ones(300_000)
    with P(return_as="generator", temp_folder=str(tmp_path)) as parallel:
        results = parallel(delayed(sum_after_nap)(a, 0.2) for _ in range(6))
        assert next(results) == 300_000.0
    assert list(results) == [300_000.0] * 5
    assert os.listdir(tmp_path) == []


def test_joblib_temp_folder_variable_is_the_default_temp_folder(tmp_path, monkeypatch):
    # joblib's documented order for temp_folder=None: JOBLIB_TEMP_FOLDER,
    # then /dev/shm, then the system temp dir.
    monkeypatch.setenv("JOBLIB_TEMP_FOLDER", str(tmp_path))
    a = np.ones(300_000)
    out = P()(delayed(describe_array)(a) for _ in range(2))
    assert {f.startswith(str(tmp_path) + os.sep) for _, _, f, _ in out} == {True}
    assert os.listdir(tmp_path) == []


def test_temp_folder_given_as_bytes_or_a_path_object(tmp_path):
    # Both pass Parallel's check of temp_folder: both must work.
    a = np.ones(300_000)
    for folder in (os.fsencode(tmp_path), tmp_path):
        out = P(temp_folder=folder)(delayed(describe_array)(a) for _ in range(2))
        assert {os.path.dirname(os.path.dirname(f)) for _, _, f, _ in out} == {str(tmp_path)}
    assert os.listdir(tmp_path) == []


def test_temp_folder_under_home_is_expanded(tmp_path, monkeypatch):
    # joblib expands "~" (os.path.expanduser); a literal "~" folder in the
    # current directory is not what the user asked for.
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    a = np.ones(300_000)
    out = P(temp_folder="~/scratch")(delayed(describe_array)(a) for _ in range(2))
    assert {os.path.dirname(os.path.dirname(f)) for _, _, f, _ in out} == {
        str(tmp_path / "home" / "scratch")}
    assert not os.path.exists(tmp_path / "~")


@pytest.mark.parametrize("make_folder", [
    lambda tmp: str(tmp / "a_file"), lambda tmp: str(tmp / "a_file" / "below"),
], ids=["a file", "below a file"])
def test_unusable_temp_folder_is_named_not_blamed_on_the_argument(tmp_path, make_folder):
    (tmp_path / "a_file").write_text("")
    folder = make_folder(tmp_path)
    a = np.ones(300_000)
    with pytest.raises(OSError, match="temp_folder") as info:
        P(temp_folder=folder)(delayed(describe_array)(a) for _ in range(2))
    assert "cannot be pickled" not in str(info.value)
    assert sorted(os.listdir(tmp_path)) == ["a_file"]
    assert P()(delayed(square)(i) for i in range(3)) == [0, 1, 4]


def test_file_backed_memmap_is_shared_not_copied(tmp_path):
    path = str(tmp_path / "data.bin")
    m = np.memmap(path, dtype=np.float64, mode="w+", shape=(1000,))
    P()(delayed(write_at)(m, i) for i in range(10))
    assert list(m[:10]) == [float(i + 1) for i in range(10)]
    view = m[500:600]
    view[:] = 2.0
    out = P()(delayed(describe_array)(view) for _ in range(2))
    assert {(f, s) for _, _, f, s in out} == {(path, 200.0)}
    m.flush()
    private = np.memmap(path, dtype=np.float64, mode="c", shape=(1000,))
    private[:] = 3.0  # copy-on-write: the file does not change, so send the data
    out = P(max_nbytes=None)(delayed(describe_array)(private) for _ in range(2))
    assert {s for *_, s in out} == {3000.0}


# --------------------------------------------------------------------------
# the workers' environment and nested calls


def test_thread_limits_in_workers(monkeypatch):
    for var in THREAD_LIMIT_VARS:
        monkeypatch.delenv(var, raising=False)
    expected = str(max(cyjob.cpu_count() // 2, 1))
    env = P()([delayed(env_of)(THREAD_LIMIT_VARS)])[0]
    assert env == dict.fromkeys(THREAD_LIMIT_VARS, expected)
    with parallel_config(inner_max_num_threads=3):
        env = P()([delayed(env_of)(THREAD_LIMIT_VARS)])[0]
    assert env == dict.fromkeys(THREAD_LIMIT_VARS, "3")
    monkeypatch.setenv("OMP_NUM_THREADS", "5")  # the user's choice wins
    env = P()([delayed(env_of)(THREAD_LIMIT_VARS)])[0]
    assert env["OMP_NUM_THREADS"] == "5" and env["MKL_NUM_THREADS"] == expected


def test_nested_parallel_runs_on_threads_inside_workers():
    out = P()(delayed(nested_sum)(6) for _ in range(3))
    assert out == [(True, 6)] * 3


# --------------------------------------------------------------------------
# no leaks


def _cyjob_processes():
    """Our fork server and its workers (joblib's workers may be around too)."""
    out = []
    for pid in descendants():
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if b"forkserver_main" in f.read():
                    out.append(pid)
        except OSError:
            pass
    return out


def _resources():
    shm = [e for e in os.listdir("/dev/shm") if e.startswith(f"cyjob_{os.getpid()}_")]
    return {
        "processes": len(descendants()),
        "threads": len(os.listdir("/proc/self/task")),
        "python threads": threading.active_count(),
        "fds": len(os.listdir("/proc/self/fd")),
        "shm": len(shm),
    }


@pytest.mark.timeout(90)
def test_300_calls_leave_no_growth():
    big = np.ones(200_000)  # memmapped: one /dev/shm folder per call

    def calls(n):
        for i in range(n):
            if i % 3 == 0:
                assert P()(delayed(describe_array)(big) for _ in range(2))[0][0] == "memmap"
            elif i % 50 == 1:
                with pytest.raises(ValueError):
                    P()(delayed(fail_on)(j, 1) for j in range(4))
            else:
                assert P()(delayed(square)(j) for j in range(10))[3] == 9

    calls(10)
    before = _resources()
    calls(300)
    after = _resources()
    # No growth; a count may fall (a descriptor or thread of the warm-up closing late).
    assert {k: v for k, v in after.items() if v > before[k]} == {}, (before, after)
