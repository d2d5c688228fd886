"""Nothing leaks, memory stays bounded while streaming (issue 7)."""

import gc
import os
import resource
import threading
import weakref

import pytest

from cyjob import Parallel, delayed
from helpers import threads_started_since, wait_for

IN_PROCESS_BACKENDS = ["threading", "sequential", None]  # None: the default (auto)


def inc(x):
    return x + 1


def ident(x):
    return x


def fail_on(x, bad):
    if x == bad:
        raise ValueError(x)
    return x


def _fds():
    return len(os.listdir("/proc/self/fd"))


def _children():
    try:
        with open(f"/proc/{os.getpid()}/task/{os.getpid()}/children") as f:
            return len(f.read().split())
    except OSError:
        return 0


def _os_threads():
    return len(os.listdir("/proc/self/task"))


def _counts():
    gc.collect()
    return {"os threads": _os_threads(), "fds": _fds(), "children": _children()}


def _kwargs(backend):
    return {"backend": backend} if backend else {}


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc")
@pytest.mark.timeout(120)
@pytest.mark.parametrize("backend", IN_PROCESS_BACKENDS)
def test_300_calls_leave_nothing_behind(backend):
    kwargs = _kwargs(backend)
    for return_as in ("list", "generator", "generator_unordered"):  # start every pool first
        list(Parallel(n_jobs=2, return_as=return_as, **kwargs)(delayed(inc)(i) for i in range(20)))
    threads, before = set(threading.enumerate()), _counts()
    for i in range(300):
        return_as = ("list", "generator", "generator_unordered")[i % 3]
        out = Parallel(n_jobs=2, return_as=return_as, **kwargs)(delayed(inc)(j) for j in range(20))
        if i % 7 == 0:
            next(iter(out), None)
            if return_as != "list":
                out.close()  # abandoned halfway
        else:
            list(out)
        if i % 11 == 0:
            with pytest.raises(ValueError):
                Parallel(n_jobs=2, **kwargs)(delayed(fail_on)(j, 5) for j in range(20))
    # (Counts may drop: see threads_started_since.)
    grown = {k: n for k, n in _counts().items() if n > before[k]}
    assert (threads_started_since(threads), grown) == ([], {}), before


@pytest.mark.timeout(120)
def test_10000_calls_leak_no_python_objects():
    def run(n):
        for _ in range(n):
            Parallel(n_jobs=2, backend="threading")(delayed(inc)(j) for j in range(4))

    run(200)
    gc.collect()
    before = len(gc.get_objects())
    run(10_000)
    # Batches the caller ran itself may still sit in the queue for a worker
    # that waits for the GIL (up to a switch interval, ~170 calls' worth),
    # longer on a loaded machine: count until it has dropped them (a leak
    # of 10,000 calls never gets under the bound).
    growth = []

    def grown_little():
        gc.collect()
        growth.append(len(gc.get_objects()) - before)
        return growth[-1] < 200

    assert wait_for(grown_little), f"{growth[-1]} more live objects after 10,000 calls"


class Payload:
    """A task argument whose lifetime the test watches."""


@pytest.mark.timeout(60)
@pytest.mark.parametrize("backend", IN_PROCESS_BACKENDS)
@pytest.mark.parametrize("return_as", ["list", "generator", "generator_unordered"])
def test_a_finished_call_frees_its_tasks_without_the_cyclic_gc(backend, return_as):
    # Reference counting alone must free a call and the caller's task list:
    # a cycle (call -> batch -> call) would keep every task's arguments
    # alive until the cyclic GC happens to run.
    parallel = Parallel(n_jobs=2, return_as=return_as, **_kwargs(backend))
    list(parallel(delayed(ident)(Payload()) for _ in range(50)))  # warm, and a choice made
    gc.collect()
    gc.disable()
    try:
        payload = Payload()
        watch = weakref.ref(payload)
        tasks = [delayed(ident)(payload)] + [delayed(inc)(i) for i in range(200)]
        del payload
        results = list(parallel(tasks))
        del tasks, results
        # A worker may still hold its last batch for a moment (longer on a
        # loaded machine); a cycle, with the cyclic GC off, holds it forever.
        assert wait_for(lambda: watch() is None), "the call's task list outlived the call"
    finally:
        gc.enable()


def _max_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@pytest.mark.timeout(180)
def test_streaming_3_million_tasks_keeps_memory_bounded():
    n = 3_000_000
    # Warm up the pools and the allocator first, so the peak measured below
    # is the stream's own.
    for _ in Parallel(n_jobs=2, return_as="generator_unordered")(delayed(inc)(i) for i in range(100_000)):
        pass
    start = _max_rss_mb()
    total = count = 0
    for r in Parallel(n_jobs=2, return_as="generator_unordered")(delayed(inc)(i) for i in range(n)):
        total += r
        count += 1
    growth = _max_rss_mb() - start
    assert count == n and total == n * (n + 1) // 2
    assert growth < 150, f"peak memory grew by {growth:.0f} MB while streaming"
