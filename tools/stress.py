"""A long randomised stress run of every backend (not part of CI).

    python tools/stress.py --minutes 5 [--seed 1]

Each round picks a backend, n_jobs, return_as, batch size, pre_dispatch,
task durations, and a fault: an injected failure, an abandoned generator, a
time-out, a task stuck long after its call timed out, Ctrl-C (SIGINT) during
the call, a StopIteration, an exception whose __str__ fails, an unpicklable
argument, large arrays and memmaps of deleted files (processes).  It runs it
and checks the outcome (results in order, the right exception, Ctrl-C seen
promptly).  At the end it checks that threads, child processes, file
descriptors and /dev/shm folders did not grow.  Prints a summary; exits 1 on
any wrong outcome or leak.
"""

import argparse
import gc
import glob
import os
import random
import signal
import sys
import tempfile
import threading
import time
import traceback
import warnings

import numpy as np

import cyjob
from cyjob import Parallel, delayed


class Injected(Exception):
    pass


class StrFails(Exception):
    """An exception that cannot even be printed."""

    def __str__(self):
        raise RuntimeError("no str")


def raise_at(x, fail, kind):
    if fail:
        raise kind(x)
    return x * 2


def with_lock(x, lock):
    return x * 2


def array_sum(x, a):
    return x * 2 + int(a[:3].sum()) * 0


STUCK_SECONDS = 3.0
_last_stuck = [0.0]  # when the last stuck task ends at the latest


def stuck(x, stick):
    if stick:
        time.sleep(STUCK_SECONDS)
    return x * 2


def _interrupt_soon(ended, delay, again_after=2.0):
    """SIGINT ourselves ``delay`` s into this round's call, and again every
    ``again_after`` s until it has ``ended``: a Ctrl-C that was lost (see
    _unraisable) is then reported as late, not waited out for minutes."""
    def fire():
        if ended.wait(delay):
            return
        os.kill(os.getpid(), signal.SIGINT)
        while not ended.wait(again_after):
            os.kill(os.getpid(), signal.SIGINT)
    threading.Thread(target=fire, daemon=True, name="stress-interrupt").start()


def task(x, duration, fail):
    if duration:
        if duration > 0:
            time.sleep(duration)
        else:  # hold the GIL for -duration seconds
            end = time.perf_counter() - duration
            while time.perf_counter() < end:
                pass
    if fail:
        raise Injected(x)
    return x * 2


def nested(x):
    return sum(Parallel(n_jobs=2)(delayed(task)(y, 0, False) for y in range(x % 5)))


def backends():
    names = ["threading", "sequential", None]
    try:
        cyjob.backends.get_backend("processes")
        names.append("processes")
    except NotImplementedError:
        pass
    return names


def resources():
    fds = len(os.listdir("/proc/self/fd")) if os.path.isdir("/proc/self/fd") else 0
    shm = len(glob.glob(f"/dev/shm/cyjob_{os.getpid()}_*"))
    children = 0
    try:
        with open(f"/proc/{os.getpid()}/task/{os.getpid()}/children") as f:
            children = len(f.read().split())
    except OSError:
        pass
    return threading.active_count(), children, fds, shm


KINDS = ["ok", "ok", "fail", "abandon", "timeout", "nested", "stuck",
         "interrupt", "stop", "badexc", "lock", "arrays"]

# What the interpreter reported as unraisable (an exception raised in a
# weakref callback, a __del__, a GC callback, ...): a KeyboardInterrupt that
# lands there is discarded by CPython, so a round that saw one says where.
_unraisable = []


def _record_unraisable(unraisable):
    # The hook runs where the callback ran: the stack says what code let go
    # of the object whose callback swallowed the exception.
    where = "".join(traceback.format_stack(limit=8)[:-1])
    _unraisable.append(f"{unraisable.exc_type.__name__} in {unraisable.object!r:.120}, "
                       f"{threading.current_thread().name}, at:\n{where}")
    sys.__unraisablehook__(unraisable)


def one_round(rng, stats, kinds=KINDS):
    backend = rng.choice(backends())
    n_jobs = rng.choice([1, 2, 3, 4, -1])
    return_as = rng.choice(["list", "generator", "generator_unordered"])
    batch_size = rng.choice(["auto", "auto", 1, rng.randint(2, 50)])
    pre_dispatch = rng.choice(["2 * n_jobs", "2 * n_jobs", "all", "n_jobs*10**30", 1])
    n = rng.choice([0, 1, 10, 100, 1000, rng.randint(1, 5000)])
    kind = rng.choice(kinds)
    durations = [rng.choice([0, 0, 0, 1e-4, 1e-3, -2e-4]) for _ in range(n)]
    fail_at = rng.randrange(n) if kind in ("fail", "stop", "badexc") and n else -1
    kwargs = dict(n_jobs=n_jobs, return_as=return_as, batch_size=batch_size,
                  pre_dispatch=pre_dispatch)
    if backend:
        kwargs["backend"] = backend
    expected = [2 * i for i in range(n)]
    expect_error = None
    if kind == "timeout":
        kwargs["timeout"] = 0.05
        durations = [0.5 if i == n // 2 else d for i, d in enumerate(durations)]
    if kind == "nested":
        tasks = (delayed(nested)(i) for i in range(n))
        expected = [sum(2 * y for y in range(i % 5)) for i in range(n)]
    elif kind == "stuck":
        # One task outlives its call's time-out by seconds: later rounds must
        # not wait for it.  (Sequential runs it inline: no time-out there.)
        if backend in ("sequential",) or n_jobs == 1 or n == 0:
            kind = "ok"
            tasks = (delayed(task)(i, durations[i], False) for i in range(n))
        else:
            kwargs["timeout"] = 0.1
            _last_stuck[0] = time.monotonic() + STUCK_SECONDS + 1
            tasks = (delayed(stuck)(i, i == 0) for i in range(n))
    elif kind == "interrupt":
        # Ctrl-C during the call: KeyboardInterrupt, promptly, then all is well.
        n = max(n, 4)
        expected = [2 * i for i in range(n)]
        tasks = (delayed(task)(i, 0.5, False) for i in range(n))
    elif kind in ("stop", "badexc"):
        exc = StopIteration if kind == "stop" else StrFails
        tasks = (delayed(raise_at)(i, i == fail_at, exc) for i in range(n))
        if fail_at >= 0:
            expect_error = RuntimeError if kind == "stop" else (StrFails, RuntimeError)
    elif kind == "lock":
        if backend == "processes":  # explicit processes: refused, as joblib does
            kind = "ok"
            tasks = (delayed(task)(i, durations[i], False) for i in range(n))
        else:
            lock = threading.Lock()
            tasks = (delayed(with_lock)(i, lock) for i in range(n))
    elif kind == "arrays":
        # Large arrays (dumped to the call's /dev/shm folder) and a memmap
        # whose file is gone (sent by value).
        n = min(n, 50)
        expected = [2 * i for i in range(n)]
        big = np.ones(300_000)
        fd, path = tempfile.mkstemp(suffix=".mmap")
        os.close(fd)
        m = np.memmap(path, dtype=np.float64, mode="w+", shape=(200_000,))
        os.unlink(path)
        tasks = (delayed(array_sum)(i, big if i % 2 else m) for i in range(n))
    else:
        tasks = (delayed(task)(i, durations[i], i == fail_at) for i in range(n))
    if fail_at >= 0 and expect_error is None:
        expect_error = Injected
    stats[f"{backend}/{kind}"] = stats.get(f"{backend}/{kind}", 0) + 1
    ended = threading.Event()
    try:
        if kind == "interrupt":
            sent = time.monotonic()
            _interrupt_soon(ended, 0.05)
        try:
            out = Parallel(**kwargs)(tasks)
            if return_as != "list":
                if kind == "abandon":
                    for i, _ in zip(range(n // 2), out):
                        pass
                    out.close()
                    return None
                out = list(out)
        finally:
            ended.set()
    except KeyboardInterrupt:
        if kind != "interrupt":
            return "unexpected KeyboardInterrupt"
        late = time.monotonic() - sent - 0.05
        return None if late < 2.0 else (f"Ctrl-C seen {late:.2f} s late ({kwargs}; "
                                        f"unraisable: {_unraisable[-2:]})")
    except TimeoutError:
        if kind in ("timeout", "stuck") and n_jobs != 1:
            return None
        return f"unexpected TimeoutError ({kind}, {kwargs}, n={n})"
    except Exception as exc:
        if expect_error is not None and isinstance(exc, expect_error):
            if kind == "stop" and not isinstance(exc.__cause__, StopIteration):
                return "StopIteration not the cause of the RuntimeError"
            if kind == "badexc" and type(exc) is RuntimeError and "StrFails" not in str(exc):
                return f"stand-in does not name the exception: {exc}"
            return None
        return f"unexpected {type(exc).__name__}: {exc!r:.200} ({kind}, {kwargs}, n={n})"
    if kind == "interrupt":
        return f"no KeyboardInterrupt ({kwargs}; unraisable: {_unraisable[-3:]})"
    if expect_error is not None:
        return f"no error raised ({kind}, {kwargs})"
    if return_as == "generator_unordered":
        out, expected = sorted(out), sorted(expected)
    return None if out == expected else f"wrong results ({kind}, {kwargs}, n={n})"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--kinds", default=None,
                        help="comma-separated faults to draw from (default: all)")
    args = parser.parse_args()
    kinds = args.kinds.split(",") if args.kinds else KINDS
    sys.unraisablehook = _record_unraisable
    # Rounds give the sequential backend a time-out on purpose; it says (as
    # joblib does) that it ignores it.
    warnings.filterwarnings("ignore", message=".*does not support timeout")
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    rng = random.Random(seed)
    # Start every pool the rounds may use: pools are kept per configuration.
    for backend in backends():
        for n_jobs in (2, 3, 4):
            for kwargs in ({}, {"return_as": "generator"}, {"timeout": 10}):
                list(Parallel(n_jobs=n_jobs, backend=backend, **kwargs)(
                    delayed(task)(i, 0, False) for i in range(10)))
    before = resources()
    names_before = {t.name for t in threading.enumerate()}
    stats, errors, rounds = {}, [], 0
    deadline = time.monotonic() + args.minutes * 60
    while time.monotonic() < deadline:
        problem = one_round(rng, stats, kinds)
        rounds += 1
        if problem:
            errors.append(problem)
            print("ERROR:", problem, flush=True)
    gc.collect()
    # Stuck tasks (and the threads retired with them) end a few seconds after
    # their round: growth is counted once they have.
    time.sleep(max(1.0, _last_stuck[0] - time.monotonic()))
    gc.collect()
    after = resources()
    print(f"stress: seed={seed}, {rounds} rounds in {args.minutes:g} min, "
          f"{len(errors)} wrong outcomes")
    for key in sorted(stats, key=str):
        print(f"  {key}: {stats[key]}")
    print(f"threads {before[0]} -> {after[0]}, children {before[1]} -> {after[1]}, "
          f"fds {before[2]} -> {after[2]}, /dev/shm folders {before[3]} -> {after[3]}")
    leaked = (after[0] > before[0] + 8 or after[1] > before[1] + 8 or after[2] > before[2] + 8
              or after[3] > before[3])
    new = sorted(t.name for t in threading.enumerate() if t.name not in names_before)
    if new:
        print("threads started since the warm-up:", ", ".join(new))
    if leaked:
        print("LEAK: resources grew")
    return 1 if errors or leaked else 0


if __name__ == "__main__":
    raise SystemExit(main())
