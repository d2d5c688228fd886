"""joblib's behaviours that code written for joblib relies on (issue 12).

Each test pins one behaviour; joblib's own test_parallel.py also runs against
cyjob (tests/joblib_suite).  Exits, hangs and signals run in a subprocess
with a timeout.
"""

import multiprocessing
import os
import pickle
import subprocess
import sys
import textwrap
import threading
import time
import warnings

import numpy as np
import pytest

import cyjob
from cyjob import Parallel, delayed, parallel_config, register_parallel_backend
from helpers import child_env

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_script(code, timeout=60, args=(), env=None):
    """Run ``code`` in a fresh interpreter that imports this cyjob."""
    environ = child_env(**(env or {}))
    return subprocess.run([sys.executable, *args, "-c", textwrap.dedent(code)],
                          capture_output=True, text=True, timeout=timeout, env=environ)


def square(x):
    return x * x


def append_to(shared, value):
    shared.append(value)
    return value


def slow_if(x, slow, seconds=10.0):
    if x == slow:
        time.sleep(seconds)
    return x


def byteorder_of(a):
    return a, a.dtype.byteorder


def folder_holds_files(folder, array):
    return len(os.listdir(folder)) > 0


def nested_call(backend, n_jobs=2):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        Parallel(n_jobs=n_jobs, backend=backend)(delayed(square)(i) for i in range(3))
    return [str(w.message) for w in caught]


class CustomError(ValueError):
    pass


def raise_custom(x):
    raise CustomError(f"bad {x}")


def nested_raise(x):
    return Parallel(n_jobs=2, backend="threading")(delayed(raise_custom)(i) for i in range(3))


def divide(x, y):
    return x / y


def interrupt(x):
    time.sleep(0.05)
    raise KeyboardInterrupt


class FinickyError(Exception):
    def __init__(self, a, b, c, d):  # no super().__init__: args still travel
        pass


def raise_finicky(x):
    if x == 7:
        raise FinickyError("a", "b", "c", "d")
    return x


def recurse(_=None):
    return Parallel()(delayed(recurse)() for _ in range(2))


def record_pid(status):
    status[os.getpid()] = "initialized"


def initialized_state(status):
    return status.get(os.getpid())


# --------------------------------------------------------------------------
# a Parallel instance runs one call at a time; sequential generators are lazy


@pytest.mark.parametrize("backend, n_jobs", [("threading", 2), ("loky", 2), ("sequential", 1)])
@pytest.mark.parametrize("return_as", ["generator", "generator_unordered"])
def test_calling_a_running_instance_raises_at_once(backend, n_jobs, return_as):
    parallel = Parallel(n_jobs=n_jobs, backend=backend, return_as=return_as)
    gen = parallel(delayed(time.sleep)(0.2) for _ in range(6))
    with pytest.raises(RuntimeError, match="This Parallel instance is already running"):
        parallel(delayed(square)(i) for i in range(3))
    gen.close()  # closing the first generator ends its call...
    assert sorted(parallel(delayed(square)(i) for i in range(3))) == [0, 1, 4]  # ...and frees it


@pytest.mark.parametrize("backend", ["threading", "loky", "sequential"])
@pytest.mark.parametrize("return_as", ["generator", "generator_unordered"])
def test_a_separate_instance_runs_while_a_dropped_generator_is_collected(backend, return_as):
    # (joblib's test_multiple_generator_call_separated_gc, without its
    # private attributes; cyjob's process pool has no "shared executor shut
    # down" error to expect.)
    first = Parallel(n_jobs=2, backend=backend, return_as=return_as)(
        delayed(time.sleep)(10) for _ in range(10))
    del first
    second = Parallel(n_jobs=2, backend=backend, return_as=return_as)(
        delayed(square)(i) for i in range(10, 20))
    assert sorted(second) == [square(i) for i in range(10, 20)]


def test_sequential_generator_computes_each_result_when_asked():
    ran = []

    def record(i):
        ran.append(i)
        return i

    gen = Parallel(n_jobs=1, return_as="generator")(delayed(record)(i) for i in range(5))
    assert ran == []  # nothing starts at call time
    assert next(gen) == 0 and ran == [0]
    assert next(gen) == 1 and ran == [0, 1]
    assert list(gen) == [2, 3, 4]


def test_fixed_batches_read_no_input_ahead_of_pre_dispatch():
    log = []

    def produce():
        for i in range(6):
            log.append(f"produced {i}")
            yield delayed(log.append)(f"consumed {i}")

    Parallel(n_jobs=1, batch_size=2)(produce())
    assert log[:4] == ["produced 0", "produced 1", "consumed 0", "consumed 1"]


@pytest.mark.parametrize("params", [{"n_jobs": 1}, {"n_jobs": 2, "backend": "sequential"}])
def test_one_thread_runs_each_task_as_it_reads_it(params):
    """In one thread with automatic batch sizes, each task is read just
    before it runs, as joblib's sequential loop does (cyjob read a batch's
    tasks ahead, then ran them: up to hundreds read and not run yet)."""
    log = []

    def produce():
        for i in range(3000):
            log.append("produced")
            yield delayed(log.append)("consumed")

    Parallel(**params)(produce())
    assert log == ["produced", "consumed"] * 3000


# --------------------------------------------------------------------------
# generator_unordered on processes


def test_generator_unordered_on_processes_yields_fastest_first():
    gen = Parallel(n_jobs=2, backend="loky", return_as="generator_unordered")(
        delayed(slow_if)(i, 1) for i in range(10))
    first_nine = sorted(next(gen) for _ in range(9))
    gen.close()  # the slow task's worker is stopped
    assert first_nine == [0, 2, 3, 4, 5, 6, 7, 8, 9]


# --------------------------------------------------------------------------
# backends written for joblib's API


def test_import_cyjob_does_not_import_joblib():
    out = run_script("""
        import sys, cyjob
        from cyjob import Parallel, delayed
        Parallel(n_jobs=2, backend="threading")(delayed(abs)(-i) for i in range(4))
        print("joblib" in sys.modules)
    """)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_joblib_registered_backend_runs_under_cyjob(capsys):
    import joblib
    from joblib._parallel_backends import LokyBackend

    class CountingLoky(LokyBackend):
        """A subclass of joblib's own backend, as Ray's and joblibspark's are."""
        configured = 0

        def configure(self, *args, **kwargs):
            type(self).configured += 1
            return super().configure(*args, **kwargs)

    joblib.register_parallel_backend("conformance-counting-loky", CountingLoky)
    expected = [square(i) for i in range(8)]
    assert Parallel(n_jobs=2, backend="conformance-counting-loky")(
        delayed(square)(i) for i in range(8)) == expected
    with parallel_config(backend="conformance-counting-loky", n_jobs=2):
        assert Parallel(verbose=1)(delayed(square)(i) for i in range(8)) == expected
    assert CountingLoky.configured == 2
    assert "Handing this call to joblib.Parallel" in capsys.readouterr().err


def test_joblib_backend_registered_with_cyjob_and_passed_as_instance():
    from joblib._parallel_backends import ThreadingBackend

    register_parallel_backend("conformance-joblib-threads", ThreadingBackend)
    assert Parallel(n_jobs=2, backend="conformance-joblib-threads")(
        delayed(square)(i) for i in range(5)) == [0, 1, 4, 9, 16]
    assert Parallel(n_jobs=2, backend=ThreadingBackend(), return_as="generator")(
        delayed(square)(i) for i in range(3)).__next__() == 0


def test_joblib_backend_without_shared_memory_refuses_require_sharedmem():
    from joblib._parallel_backends import LokyBackend

    with pytest.raises(ValueError, match="shared memory"):
        Parallel(backend=LokyBackend(), require="sharedmem")


# --------------------------------------------------------------------------
# process workers


def test_manager_proxies_work_in_process_workers():
    with multiprocessing.Manager() as manager:
        shared = manager.list()
        out = Parallel(n_jobs=2, backend="loky")(delayed(append_to)(shared, i) for i in range(6))
        assert out == list(range(6))
        assert sorted(shared) == list(range(6))


def test_initializer_runs_once_in_each_worker():
    with multiprocessing.Manager() as manager:
        status = manager.dict()
        states = Parallel(n_jobs=2, backend="loky", initializer=record_pid, initargs=(status,))(
            delayed(initialized_state)(status) for _ in range(20))
        assert set(states) == {"initialized"}
        with parallel_config(backend="multiprocessing", n_jobs=2, initializer=record_pid,
                             initargs=(status,)):
            assert set(Parallel()(delayed(initialized_state)(status) for _ in range(8))) == {
                "initialized"}


def test_error_of_a_nested_call_in_a_process_keeps_its_type():
    with pytest.raises(CustomError, match="bad"):
        Parallel(n_jobs=2, backend="loky")(delayed(nested_raise)(i) for i in range(2))


@pytest.mark.parametrize("backend", ["loky", "multiprocessing"])
def test_errors_are_captured_and_a_with_block_keeps_working(backend):
    expected = [square(i) for i in range(10)]
    with Parallel(n_jobs=2, backend=backend) as parallel:
        with pytest.raises(ZeroDivisionError):
            parallel(delayed(divide)(x, y) for x, y in zip((0, 1), (1, 0)))
        assert parallel(delayed(square)(i) for i in range(10)) == expected
        with pytest.raises(KeyboardInterrupt):
            parallel(delayed(interrupt)(x) for x in (1, 0))
        assert parallel(delayed(square)(i) for i in range(10)) == expected
    with pytest.raises(FinickyError):
        Parallel(n_jobs=2, backend=backend)(delayed(raise_finicky)(i) for i in range(30))


def test_recursion_error_of_nested_process_calls_keeps_its_type():
    with parallel_config("loky", n_jobs=2):
        with pytest.raises(RecursionError):
            recurse()


@pytest.mark.parametrize("max_nbytes", [1, None])
@pytest.mark.parametrize("byteorder", ["<", ">", "="])
def test_byte_order_survives_process_workers(byteorder, max_nbytes):
    x = np.arange(6, dtype=np.int64).reshape(2, 3).view(f"{byteorder}i4")
    out = Parallel(n_jobs=2, backend="loky", max_nbytes=max_nbytes)(
        delayed(byteorder_of)(x) for _ in range(3))
    for returned, in_worker in out:
        assert in_worker == x.dtype.byteorder == returned.dtype.byteorder
        np.testing.assert_array_equal(returned, x)


def test_pickling_error_names_the_task_to_send():
    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("no")

    with pytest.raises(pickle.PicklingError, match="the task to send.*argument 0 of task 0"):
        Parallel(n_jobs=2, backend="loky")(delayed(id)(Unpicklable()) for _ in range(3))


def test_multiprocessing_context_is_accepted_as_backend():
    context = multiprocessing.get_context("spawn")
    assert Parallel(n_jobs=2, backend=context)(delayed(square)(i) for i in range(4)) == [0, 1, 4, 9]
    with parallel_config(backend=context, n_jobs=2):
        assert Parallel()(delayed(square)(i) for i in range(4)) == [0, 1, 4, 9]


def test_temp_folder_holds_the_memmaps_while_the_with_block_runs(tmp_path):
    folder = str(tmp_path)
    arrays = [np.random.random(10)] * 2
    with Parallel(n_jobs=2, backend="loky", max_nbytes=1, temp_folder=folder) as parallel:
        # While the call runs, its arrays are in temp_folder...
        assert parallel(delayed(folder_holds_files)(folder, a) for a in arrays) == [True, True]
        # ...and they stay there for the other calls of the block.
        assert os.listdir(folder)
    assert os.listdir(folder) == []  # removed when the block ends
    Parallel(n_jobs=2, backend="loky", max_nbytes=1, temp_folder=folder)(
        delayed(square)(a) for a in arrays)
    assert os.listdir(folder) == []  # and at the end of each call outside a block


# --------------------------------------------------------------------------
# parameters


@pytest.mark.parametrize("n_jobs", ["2", 2.3, 2])
def test_n_jobs_is_converted_with_int_as_joblib_does(n_jobs):
    assert cyjob.effective_n_jobs(n_jobs) == 2
    assert Parallel(n_jobs=n_jobs, backend="threading")(
        delayed(square)(i) for i in range(4)) == [0, 1, 4, 9]


@pytest.mark.parametrize("n_jobs, message", [
    (0, "n_jobs == 0 in Parallel has no meaning"),
    (0.5, "n_jobs == 0 in Parallel has no meaning"),
    ("2.3", "n_jobs could not be converted to int"),
])
def test_bad_n_jobs_messages_are_joblibs(n_jobs, message):
    with pytest.raises(ValueError, match=message):
        Parallel(n_jobs=n_jobs)


@pytest.mark.parametrize("backend", ["threading", "loky", "multiprocessing", None])
@pytest.mark.parametrize("n_jobs", [10**30, 2**63, 2**31])
def test_an_n_jobs_no_machine_can_run_is_a_value_error_at_construction(backend, n_jobs):
    # joblib fails at call time with an OverflowError of loky's ("Python int
    # too large to convert to C int") or a pre_dispatch error of its own.
    with pytest.raises(ValueError, match="n_jobs"):
        Parallel(n_jobs=n_jobs, backend=backend)
    with parallel_config(n_jobs=n_jobs), pytest.raises(ValueError, match="n_jobs"):
        Parallel(backend=backend)
    # The sequential backend ignores n_jobs, as joblib's does.
    assert Parallel(n_jobs=n_jobs, backend="sequential")(
        delayed(square)(i) for i in range(3)) == [0, 1, 4]


@pytest.mark.parametrize("kwargs", [
    dict(prefer="processes", require="sharedmem"),
    dict(backend="loky", require="sharedmem"),
    dict(backend="multiprocessing", require="sharedmem"),
])
def test_inconsistent_hints_are_a_value_error(kwargs):
    with pytest.raises(ValueError):
        Parallel(**kwargs)


@pytest.mark.parametrize("backend", [3, 2.5, object(), b"threading"], ids=repr)
def test_a_backend_of_the_wrong_type_is_a_value_error_as_in_joblib(backend):
    # joblib: ValueError("Invalid backend: 3, expected one of [...]").
    with pytest.raises(ValueError, match="Invalid backend"):
        Parallel(n_jobs=2, backend=backend)
    with pytest.raises(ValueError, match="Invalid backend"):
        cyjob.parallel_config(backend=backend)


# --------------------------------------------------------------------------
# warnings


def test_timeout_on_the_sequential_backend_warns_as_joblib():
    with pytest.warns(UserWarning) as caught:
        Parallel(n_jobs=1, timeout=1)(delayed(square)(i) for i in range(5))
    assert [str(w.message) for w in caught] == [
        "The backend class 'SequentialBackend' does not support timeout. You have set "
        "'timeout=1' in Parallel but the 'timeout' parameter will not be used."]


@pytest.mark.parametrize("outer, inner, expected", [
    ("threading", "loky", "Loky-backed parallel loops cannot be nested below threads"),
    ("threading", "multiprocessing",
     "Multiprocessing-backed parallel loops cannot be nested below threads"),
    ("loky", "multiprocessing", "Multiprocessing-backed parallel loops cannot be nested"),
    ("loky", "loky", None),
    ("threading", "threading", None),
])
def test_nested_process_calls_warn_as_joblib(outer, inner, expected):
    messages = Parallel(n_jobs=2, backend=outer)(delayed(nested_call)(inner) for _ in range(2))
    for caught in messages:
        if expected is None:
            assert caught == []
        else:
            assert len(caught) == 1 and caught[0].startswith(expected)
    # n_jobs=1 inside: nothing to warn about
    assert Parallel(n_jobs=2, backend=outer)(
        delayed(nested_call)(inner, 1) for _ in range(2)) == [[], []]


# --------------------------------------------------------------------------
# verbose


def test_verbose_prints_the_backend_line_and_no_line_twice(capsys):
    Parallel(n_jobs=2, backend="threading", verbose=50)(delayed(square)(i) for i in range(30))
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "[Parallel(n_jobs=2)]: Using backend ThreadingBackend with 2 concurrent workers."
    assert len(lines) == len(set(lines))
    assert lines[-1].startswith("[Parallel(n_jobs=2)]: Done 30 out of 30 | elapsed:")


def test_verbose_lines_never_share_a_line_with_the_progress_bar(capsys):
    Parallel(n_jobs=2, backend="threading", verbose=10, progress=True, batch_size=1)(
        delayed(time.sleep)(0.01) for _ in range(20))
    err = capsys.readouterr().err
    for line in err.split("\n"):
        # A verbose line starts its own line: no bar (or bar residue) before it.
        if "[Parallel(" in line:
            before = line.split("[Parallel(")[0].split("\r")[-1]
            assert before.strip() == ""


# --------------------------------------------------------------------------
# threads left running by an aborted call


def test_timed_out_tasks_do_not_hold_the_threads_of_later_calls():
    with pytest.raises(TimeoutError):
        Parallel(n_jobs=2, backend="threading", timeout=0.1)(
            delayed(time.sleep)(5) for _ in range(2))
    # Both threads are still asleep in the timed-out tasks: this call gets
    # threads of its own instead of waiting seconds behind them.
    done = threading.Event()
    out = Parallel(n_jobs=2, backend="threading", timeout=2)(
        delayed(square)(i) for i in range(4))
    done.set()
    assert out == [0, 1, 4, 9]


def test_exit_does_not_wait_seconds_per_thread_stuck_in_a_task():
    # Eight threads asleep in tasks of a timed-out call: exit used to join
    # each for 2 s (16 s); it no longer waits for tasks nobody waits for (the
    # subprocess timeout is the hang guard, with a wide margin).
    out = run_script("""
        import time
        from cyjob import Parallel, delayed
        try:
            Parallel(n_jobs=8, backend="threading", timeout=0.2)(
                delayed(time.sleep)(60) for _ in range(8))
        except TimeoutError:
            print("timed out")
    """, timeout=12)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "timed out"


# --------------------------------------------------------------------------
# the first five minutes


def test_process_backend_leaves_no_resource_warning_under_dev_mode():
    out = run_script("""
        from cyjob import Parallel, delayed
        print(Parallel(n_jobs=2, backend="loky")(delayed(abs)(-i) for i in range(4)))
    """, args=("-X", "dev"))
    assert out.returncode == 0, out.stderr
    assert "ResourceWarning" not in out.stderr, out.stderr
    assert out.stdout.strip() == "[0, 1, 2, 3]"


def test_cli_help_and_version():
    out = run_script("import sys; from cyjob.__main__ import main; sys.exit(main(['--help']))")
    assert out.returncode == 0 and "bench" in out.stdout
    out = run_script("import sys; from cyjob.__main__ import main; sys.exit(main(['--version']))")
    assert out.returncode == 0 and out.stdout.strip() == f"cyjob {cyjob.__version__}"


def test_license_file_is_bsd_3_clause():
    with open(os.path.join(ROOT, "LICENSE")) as f:
        text = f.read()
    assert "Redistribution and use in source and binary forms" in text
    assert "Neither the name of the copyright holder" in text


def test_bench_demo_shows_times_and_exits_zero():
    out = run_script("import sys; from cyjob.__main__ import main; sys.exit(main(['bench', '--quick']))",
                     timeout=240)
    assert out.returncode == 0, out.stdout + out.stderr
    text = out.stdout
    assert "plain loop" in text and "cyjob" in text and "All results agree" in text
    assert " ms" in text or " s " in text  # absolute times, not only ratios
    assert "faster" in text or "slower" in text or "as fast as" in text
