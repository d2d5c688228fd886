"""Small task functions and probes shared by the test modules.

Everything here is module-level so that tasks pickle by reference.
"""

import os
import threading
import time

import cyjob
from cyjob import delayed

# Where the cyjob under test was imported from: src/ for an in-place build,
# site-packages when installed (as .ci/run tests it). Child interpreters must
# import that same cyjob, never the repo's unbuilt src/.
CYJOB_PATH = os.path.dirname(os.path.dirname(os.path.abspath(cyjob.__file__)))


def child_env(**extra):
    """os.environ for a child interpreter that imports the cyjob under test."""
    env = dict(os.environ, **extra)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (CYJOB_PATH, env.get("PYTHONPATH")) if p)
    return env


class Counter:
    """A task function that counts its calls (thread-safe) and returns its argument."""

    def __init__(self):
        self._lock = threading.Lock()
        self.value = 0

    def __call__(self, x=None, *args, **kwargs):
        with self._lock:
            self.value += 1
        return x


class InputDrained(Exception):
    """Raised by LazyInput when more items were pulled than a test allows."""


class LazyInput:
    """A long lazy input of ``delayed(func)(i)`` tasks that counts how many
    items have been pulled from it.

    With ``limit``, pulling more than ``limit`` items raises InputDrained, so
    that a scheduler that drains its input fails the test at once instead of
    spending minutes on ten million tasks.
    """

    def __init__(self, func, n=10_000_000, limit=None):
        self.func = func
        self.n = n
        self.limit = limit
        self.pulled = 0

    def __iter__(self):
        task = delayed(self.func)
        for i in range(self.n):
            if self.limit is not None and self.pulled >= self.limit:
                raise InputDrained(f"{self.pulled} items pulled from the input")
            self.pulled += 1
            yield task(i)


def ident(x):
    return x


def add(a, b=0):
    return a + b


def current_thread_id(_=None):
    # Long enough that idle pool workers would pick up some of the tasks.
    time.sleep(0.002)
    return threading.get_ident()


def current_thread_name(_=None):
    return threading.current_thread().name


def wait_at(barrier):
    """Block until ``barrier.parties`` tasks wait at once; BrokenBarrierError
    after the barrier's timeout if they never run concurrently."""
    barrier.wait()
    return threading.current_thread().name


def assert_runs_concurrently(make_parallel, parties=2):
    """``make_parallel()`` must run ``parties`` tasks at the same time."""
    barrier = threading.Barrier(parties, timeout=10)
    names = make_parallel()(delayed(wait_at)(barrier) for _ in range(parties))
    assert len(names) == parties


def assert_runs_in_caller_thread(make_parallel, n=20):
    """Every task of ``make_parallel()`` runs in the calling thread."""
    me = threading.get_ident()
    idents = make_parallel()(delayed(current_thread_id)(i) for i in range(n))
    assert idents == [me] * n


def wait_for(predicate, seconds=10.0):
    """Poll ``predicate`` until it is true (True) or ``seconds`` pass
    (False): for what a worker finishes a moment after the call returns,
    which a loaded machine can delay well past any fixed sleep."""
    deadline = time.monotonic() + seconds
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def threads_started_since(before):
    """The names of the threads running now that ``before`` (a set of
    ``threading.enumerate()``) did not hold, sorted.  A leak check compares
    these, not counts: a worker retired earlier in the suite (still running
    a task of a call that ended) leaves whenever that task returns, so a
    test's thread count can drop while it runs without anything leaking."""
    return sorted(t.name for t in threading.enumerate() if t not in before)


def descendants():
    """The pids of this process's live descendants, sorted (read from /proc)."""
    import os

    children = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if fields[0] != "Z":
                children.setdefault(int(fields[1]), []).append(int(entry))
    out, todo = [], [os.getpid()]
    while todo:
        pid = todo.pop()
        out.extend(children.get(pid, ()))
        todo.extend(children.get(pid, ()))
    return sorted(out)
