"""Concurrency and lifecycle of the thread pool: several calling threads,
nested calls, fork, interpreter exit, abandoned generators, worker names and
Ctrl-C."""

import functools
import gc
import os
import select
import signal
import subprocess
import sys
import textwrap
import threading
import time
import warnings

import joblib
import pytest

import cyjob
from cyjob import Parallel, delayed
from helpers import (
    Counter,
    LazyInput,
    add,
    assert_runs_concurrently,
    ident,
    threads_started_since,
    wait_at,
)

# The thread pool, named explicitly (the default backend measures and picks).
threads = functools.partial(Parallel, backend="threading")

# Child interpreters import the same cyjob as this one.
SRC = os.path.dirname(os.path.dirname(os.path.abspath(cyjob.__file__)))


class TaskError(Exception):
    pass


def fail_on(x, bad=7):
    if x == bad:
        raise TaskError(x)
    return x


# --------------------------------------------------------------------------
# several calling threads

def test_several_python_threads_call_parallel_at_once():
    n_threads, n_rounds = 6, 15
    start = threading.Barrier(n_threads, timeout=10)
    errors = []

    def caller(k):
        try:
            start.wait()
            for j in range(n_rounds):
                n_jobs = 2 + (j + k) % 2
                return_as = ("list", "generator", "generator_unordered")[(j + k) % 3]
                batch_size = ("auto", 1, 7)[k % 3]
                expected = [k * 1000 + i for i in range(300)]
                results = list(threads(n_jobs=n_jobs, return_as=return_as, batch_size=batch_size)(
                    delayed(add)(i, b=k * 1000) for i in range(300)))
                if return_as == "generator_unordered":
                    results.sort()
                assert results == expected, (k, j, return_as)
                try:
                    threads(n_jobs=2)(delayed(fail_on)(i) for i in range(100))
                    raise AssertionError("a failing call did not raise")
                except TaskError:
                    pass
        except BaseException as exc:  # reported below
            errors.append((k, exc))

    callers = [threading.Thread(target=caller, args=(k,)) for k in range(n_threads)]
    for t in callers:
        t.start()
    for t in callers:
        t.join(40)
    assert not any(t.is_alive() for t in callers), "a calling thread is stuck"
    assert errors == []


def test_calls_from_other_threads_use_the_workers():
    results = []

    def caller():
        assert_runs_concurrently(lambda: threads(n_jobs=2, batch_size=1))
        results.append("ok")

    callers = [threading.Thread(target=caller) for _ in range(3)]
    for t in callers:
        t.start()
    for t in callers:
        t.join(30)
    assert results == ["ok"] * 3


def test_a_task_waiting_for_later_tasks_of_its_call_does_not_stall_them():
    # With the threading backend, tasks share memory and may wait for each
    # other; joblib keeps dispatching to free workers while one task waits.
    n_fast = 6

    def run(module):
        done = Counter()
        all_done = threading.Event()

        def fast(i):
            done()
            if done.value == n_fast:
                all_done.set()
            return i

        def waiter():
            return "ok" if all_done.wait(3) else "waited 3 s for the other tasks"

        tasks = [module.delayed(waiter)()] + [module.delayed(fast)(i) for i in range(n_fast)]
        return module.Parallel(n_jobs=2, backend="threading")(tasks)

    expected = ["ok"] + list(range(n_fast))
    assert run(joblib) == expected  # the oracle
    assert run(cyjob) == expected


# --------------------------------------------------------------------------
# nested calls

def _thread_name(_):
    return threading.current_thread().name


def _inner(x, n_jobs=2):
    return sum(threads(n_jobs=n_jobs)(delayed(add)(x, b=i) for i in range(x + 1)))


def _middle(x):
    return sum(threads(n_jobs=2)(delayed(_inner)(i) for i in range(x)))


def _inner_names(x):
    return threads(n_jobs=2)(delayed(_thread_name)(i) for i in range(5))


def _middle_names(x):
    return [n for names in threads(n_jobs=2)(delayed(_inner_names)(i) for i in range(3))
            for n in names]


def test_nested_parallel_two_levels():
    expected = [sum(x + i for i in range(x + 1)) for x in range(20)]
    assert threads(n_jobs=2)(delayed(_inner)(x) for x in range(20)) == expected
    assert list(threads(n_jobs=2, return_as="generator")(
        delayed(_inner)(x) for x in range(20))) == expected


def test_nested_parallel_three_levels():
    expected = [sum(sum(i + j for j in range(i + 1)) for i in range(x)) for x in range(8)]
    assert threads(n_jobs=2)(delayed(_middle)(x) for x in range(8)) == expected


def test_nested_parallel_starts_no_new_threads():
    threads(n_jobs=2)(delayed(ident)(i) for i in range(10))  # the pool exists
    before = set(threading.enumerate())
    names = [n for names in threads(n_jobs=2)(delayed(_middle_names)(i) for i in range(4))
             for n in names]
    assert len(names) == 4 * 3 * 5
    me = threading.current_thread().name
    assert all(n == me or n.startswith("cyjob-worker") for n in names), set(names)
    assert threads_started_since(before) == []


_busy_lock = threading.Lock()
_busy = {"now": 0, "peak": 0}


def _busy_leaf(x):
    with _busy_lock:
        _busy["now"] += 1
        _busy["peak"] = max(_busy["peak"], _busy["now"])
    time.sleep(0.005)
    with _busy_lock:
        _busy["now"] -= 1
    return x


def _busy_middle(n_inner):
    return sum(threads(n_jobs=n_inner)(delayed(_busy_leaf)(i) for i in range(12)))


def test_nested_parallel_does_not_oversubscribe():
    # An inner call with more workers than the outer one must not add
    # threads on top of the outer call's: at most the outer workers and the
    # caller run tasks at the same time.
    _busy["peak"] = 0
    results = threads(n_jobs=2)(delayed(_busy_middle)(3) for _ in range(4))
    assert results == [66] * 4
    assert _busy["peak"] <= 2 + 1, f"{_busy['peak']} tasks ran at once"


# --------------------------------------------------------------------------
# fork

def _wait_for_child(pid, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.02)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    return "hung"


def _fork_and_run_parallel(parallel=None):
    parallel = parallel or threads(n_jobs=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # the child: never return into pytest
        code = 1
        try:
            ok = parallel(delayed(add)(i, b=1) for i in range(500)) == list(range(1, 501))
            gen = threads(n_jobs=2, return_as="generator")(delayed(ident)(i) for i in range(50))
            ok = ok and list(gen) == list(range(50))
            code = 0 if ok else 3
        except BaseException:
            code = 4
        finally:
            os._exit(code)
    return _wait_for_child(pid, timeout=20)


@pytest.mark.timeout(60)
@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_forked_child_can_run_parallel():
    threads(n_jobs=2)(delayed(ident)(i) for i in range(1000))  # workers are running
    assert _fork_and_run_parallel() == 0


@pytest.mark.timeout(60)
@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_forked_child_can_use_a_parallel_kept_warm_by_the_parent():
    with threads(n_jobs=2) as parallel:
        assert parallel(delayed(ident)(i) for i in range(100)) == list(range(100))
        assert _fork_and_run_parallel(parallel) == 0


@pytest.mark.timeout(60)
@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_fork_while_another_thread_runs_calls():
    stop = threading.Event()

    def busy():
        while not stop.is_set():
            threads(n_jobs=2, batch_size=1)(delayed(ident)(i) for i in range(200))

    t = threading.Thread(target=busy)
    t.start()
    try:
        codes = [_fork_and_run_parallel() for _ in range(5)]
    finally:
        stop.set()
        t.join(30)
    assert codes == [0] * 5


# --------------------------------------------------------------------------
# interpreter exit

def _run_python(code, timeout=30):
    env = dict(os.environ)
    env["PYTHONPATH"] = SRC + os.pathsep + env.get("PYTHONPATH", "")
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env,
                          capture_output=True, text=True, timeout=timeout)
    return proc, time.monotonic() - start


EXIT_SCRIPTS = {
    "pools-alive": """
        from cyjob import Parallel, delayed
        Parallel(backend="threading", n_jobs=2)(delayed(abs)(-i) for i in range(1000))
        Parallel(backend="threading", n_jobs=3)(delayed(abs)(-i) for i in range(1000))
        p = Parallel(backend="threading", n_jobs=2).__enter__()   # a `with` block never left
        p(delayed(abs)(-i) for i in range(10))
        print("done")
    """,
    "generator-half-consumed": """
        import time
        from cyjob import Parallel, delayed
        gen = Parallel(backend="threading", n_jobs=2, return_as="generator")(
            delayed(time.sleep)(0.01) for i in range(10_000))
        next(gen); next(gen)
        print("done")
    """,
    "unordered-generator-half-consumed": """
        import time
        from cyjob import Parallel, delayed
        gen = Parallel(backend="threading", n_jobs=3, return_as="generator_unordered", batch_size=1)(
            delayed(time.sleep)(0.01) for i in range(10_000))
        for _ in range(5):
            next(gen)
        print("done")
    """,
    "generator-never-started": """
        import time
        from cyjob import Parallel, delayed
        gen = Parallel(backend="threading", n_jobs=2, return_as="generator")(
            delayed(time.sleep)(0.01) for i in range(10_000))
        print("done")
    """,
    "tasks-still-running": """
        import time
        from cyjob import Parallel, delayed
        gen = Parallel(backend="threading", n_jobs=2, return_as="generator", batch_size=1)(
            delayed(time.sleep)(0.3) for i in range(100))
        next(gen)
        print("done")
    """,
    # joblib's threading backend exits quietly in the same situation.
    "daemon-threads-calling-parallel": """
        import threading, time
        from cyjob import Parallel, delayed
        def loop():
            while True:
                Parallel(backend="threading", n_jobs=2, batch_size=1)(delayed(abs)(-i) for i in range(1000))
        for _ in range(3):
            threading.Thread(target=loop, daemon=True).start()
        time.sleep(0.3)
        print("done")
    """,
}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("name", list(EXIT_SCRIPTS))
def test_interpreter_exits_quickly_and_quietly(name):
    proc, elapsed = _run_python(EXIT_SCRIPTS[name])
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "done\n"
    assert proc.stderr == ""
    assert elapsed < 10, f"exit took {elapsed:.1f} s"


# --------------------------------------------------------------------------
# generators abandoned halfway

def _started(counter, x):
    counter()
    time.sleep(0.001)
    return x


@pytest.mark.parametrize("how", ["close", "del"])
@pytest.mark.parametrize("return_as", ["generator", "generator_unordered"])
def test_abandoned_generator_stops_dispatching_and_leaves_the_pool_healthy(how, return_as):
    started = Counter()
    pulled = [0]

    def tasks():
        for i in range(1_000_000):
            pulled[0] += 1
            yield delayed(_started)(started, i)

    gen = threads(n_jobs=2, batch_size=1, return_as=return_as)(tasks())
    for _ in range(10):
        next(gen)
    if how == "close":
        gen.close()
    else:
        del gen
        gc.collect()
    time.sleep(0.1)  # a task claimed just before the abort may still start
    after = (pulled[0], started.value)
    time.sleep(0.3)
    assert (pulled[0], started.value) == after, "work went on after the generator was closed"
    assert after[0] < 100 and after[1] < 100
    assert threads(n_jobs=2)(delayed(ident)(i) for i in range(100)) == list(range(100))
    assert_runs_concurrently(lambda: threads(n_jobs=2, batch_size=1))


def _first_held_rest_flagged(i, zero_started, release, zero_done, later_ran, failed):
    if i == 0:
        zero_started.set()
        release.wait(10)
        zero_done.set()
    elif i < 5:
        later_ran.set()  # the batch went on after its call was aborted
    elif i == 5:
        # Fail only while task 0 is held: had task 5 failed first, the
        # batch [0..4] would be dropped unstarted, testing nothing.
        if zero_started.wait(10) and not zero_done.is_set():
            failed.set()
            raise ValueError("task 5 fails")
    return i


def test_a_running_batch_of_an_aborted_call_stops_before_its_next_task():
    # Batch [0..4] is held in task 0 while task 5, in the other batch,
    # fails the call; once task 0 returns, its batch must not run task 1:
    # a batch of long tasks checked only every 64 tasks ran on for seconds
    # after the error (or a Ctrl-C), taking the CPU from the next call.
    events = zero_started, release, zero_done, later_ran, failed = (
        [threading.Event() for _ in range(5)])
    with pytest.raises(ValueError, match="task 5 fails"):
        threads(n_jobs=2, batch_size=5)(
            delayed(_first_held_rest_flagged)(i, *events) for i in range(10))
    assert failed.is_set()
    release.set()
    assert zero_done.wait(10), "task 0 never finished"
    assert not later_ran.wait(0.5), "the aborted call's batch ran its next task"


def test_generator_closed_before_its_first_result():
    source = LazyInput(ident, n=1_000_000)
    gen = threads(n_jobs=2, return_as="generator")(source)
    gen.close()
    pulled = source.pulled
    time.sleep(0.2)
    assert source.pulled == pulled < 1000
    assert threads(n_jobs=2)(delayed(ident)(i) for i in range(10)) == list(range(10))


# --------------------------------------------------------------------------
# worker threads

def test_worker_threads_are_named_and_visible_to_threading():
    names = threads(n_jobs=2, batch_size=1)(delayed(_thread_name)(i) for i in range(1))
    assert names
    workers = [t for t in threading.enumerate() if t.name.startswith("cyjob-worker")]
    assert workers  # (a list call's caller may be one of the n_jobs workers)
    assert all(t.is_alive() for t in workers)
    # Tasks that wait for each other must run on those threads.
    barrier = threading.Barrier(2, timeout=10)
    names = threads(n_jobs=2, batch_size=1)(delayed(wait_at)(barrier) for _ in range(2))
    me = threading.current_thread().name
    assert any(n.startswith("cyjob-worker") for n in names), names
    assert all(n == me or n.startswith("cyjob-worker") for n in names), names


def test_pool_is_reused_across_calls():
    threads(n_jobs=2)(delayed(ident)(i) for i in range(100))
    before = {t.ident for t in threading.enumerate() if t.name.startswith("cyjob-worker")}
    for _ in range(20):
        threads(n_jobs=2)(delayed(ident)(i) for i in range(100))
    after = {t.ident for t in threading.enumerate() if t.name.startswith("cyjob-worker")}
    assert after == before


# --------------------------------------------------------------------------
# Ctrl-C

INTERRUPT_SCRIPT = """
import sys, time
from cyjob import Parallel, delayed
print("ready", flush=True)
start = time.monotonic()
try:
    results = Parallel(backend="threading", n_jobs=2, {params})(delayed(time.sleep)(2) for i in range(20))
    list(results)
except KeyboardInterrupt:
    print("interrupted", flush=True)
else:
    print("finished without interruption", flush=True)
"""


@pytest.mark.timeout(60)
@pytest.mark.parametrize("params", [
    "return_as='list'", "return_as='generator'", "return_as='generator_unordered'",
    "timeout=100",
])
def test_sigint_interrupts_a_running_call(params):
    env = dict(os.environ)
    env["PYTHONPATH"] = SRC + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.Popen([sys.executable, "-c", INTERRUPT_SCRIPT.format(params=params)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert select.select([proc.stdout], [], [], 20)[0], "the child did not start"
        assert proc.stdout.readline() == "ready\n"
        time.sleep(0.5)  # the call is now running its first tasks
        os.kill(proc.pid, signal.SIGINT)
        sent = time.monotonic()
        ready = select.select([proc.stdout], [], [], 10)[0]
        waited = time.monotonic() - sent
        assert ready, "no KeyboardInterrupt within 10 s"
        assert proc.stdout.readline() == "interrupted\n"
        assert waited < 3, f"KeyboardInterrupt took {waited:.1f} s"
        _, err = proc.communicate(timeout=20)  # and the process exits
        assert proc.returncode == 0, err
        assert err == ""
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def test_the_main_thread_never_runs_a_task_of_a_threads_call():
    # Ctrl-C is handled only in the main thread: stuck in a task that waits
    # in C without the GIL, it would see Ctrl-C only when that task returns.
    # Tiny tasks of a function seen before included (they go to a worker in
    # one batch).  Another thread's list call, whose caller may help, runs
    # all its tasks.
    for _ in range(5):
        names = threads(n_jobs=2)(delayed(_thread_name)(i) for i in range(10))
        assert threading.main_thread().name not in names
    helped = []
    caller = threading.Thread(target=lambda: helped.extend(
        threads(n_jobs=2)(delayed(_thread_name)(i) for i in range(1000))), name="not-main")
    caller.start()
    caller.join(30)
    assert len(helped) == 1000
