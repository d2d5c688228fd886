"""A long randomised stress run of every backend (not part of CI).

    python tools/stress.py --minutes 5 [--seed 1]

Each round picks a backend, n_jobs, return_as, batch size, task durations,
an injected failure, an abandoned generator or a time-out, runs it, and
checks the outcome (results in order, the right exception).  At the end it
checks that threads, child processes and file descriptors did not grow.
Prints a summary; exits 1 on any wrong outcome or leak.
"""

import argparse
import gc
import os
import random
import threading
import time

import cyjob
from cyjob import Parallel, delayed


class Injected(Exception):
    pass


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
    children = 0
    try:
        with open(f"/proc/{os.getpid()}/task/{os.getpid()}/children") as f:
            children = len(f.read().split())
    except OSError:
        pass
    return threading.active_count(), children, fds


def one_round(rng, stats):
    backend = rng.choice(backends())
    n_jobs = rng.choice([1, 2, 3, 4, -1])
    return_as = rng.choice(["list", "generator", "generator_unordered"])
    batch_size = rng.choice(["auto", "auto", 1, rng.randint(2, 50)])
    n = rng.choice([0, 1, 10, 100, 1000, rng.randint(1, 5000)])
    kind = rng.choice(["ok", "ok", "fail", "abandon", "timeout", "nested"])
    durations = [rng.choice([0, 0, 0, 1e-4, 1e-3, -2e-4]) for _ in range(n)]
    fail_at = rng.randrange(n) if kind == "fail" and n else -1
    kwargs = dict(n_jobs=n_jobs, return_as=return_as, batch_size=batch_size)
    if backend:
        kwargs["backend"] = backend
    if kind == "timeout":
        kwargs["timeout"] = 0.05
        durations = [0.5 if i == n // 2 else d for i, d in enumerate(durations)]
    if kind == "nested":
        tasks = (delayed(nested)(i) for i in range(n))
        expected = [sum(2 * y for y in range(i % 5)) for i in range(n)]
    else:
        tasks = (delayed(task)(i, durations[i], i == fail_at) for i in range(n))
        expected = [2 * i for i in range(n)]
    stats[f"{backend}/{kind}"] = stats.get(f"{backend}/{kind}", 0) + 1
    try:
        out = Parallel(**kwargs)(tasks)
        if return_as != "list":
            if kind == "abandon":
                for i, _ in zip(range(n // 2), out):
                    pass
                out.close()
                return None
            out = list(out)
    except Injected:
        return None if fail_at >= 0 else "unexpected Injected"
    except TimeoutError:
        return None if kind == "timeout" and n_jobs != 1 else "unexpected TimeoutError"
    if fail_at >= 0:
        return f"no error raised ({kwargs})"
    if return_as == "generator_unordered":
        out, expected = sorted(out), sorted(expected)
    return None if out == expected else f"wrong results ({kind}, {kwargs}, n={n})"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    rng = random.Random(seed)
    # Start every pool the rounds may use: pools are kept per configuration.
    for backend in backends():
        for n_jobs in (2, 3, 4):
            for kwargs in ({}, {"return_as": "generator"}, {"timeout": 10}):
                list(Parallel(n_jobs=n_jobs, backend=backend, **kwargs)(
                    delayed(task)(i, 0, False) for i in range(10)))
    before = resources()
    stats, errors, rounds = {}, [], 0
    deadline = time.monotonic() + args.minutes * 60
    while time.monotonic() < deadline:
        problem = one_round(rng, stats)
        rounds += 1
        if problem:
            errors.append(problem)
            print("ERROR:", problem, flush=True)
    gc.collect()
    time.sleep(1.0)
    after = resources()
    print(f"stress: seed={seed}, {rounds} rounds in {args.minutes:g} min, "
          f"{len(errors)} wrong outcomes")
    for key in sorted(stats, key=str):
        print(f"  {key}: {stats[key]}")
    print(f"threads {before[0]} -> {after[0]}, children {before[1]} -> {after[1]}, "
          f"fds {before[2]} -> {after[2]}")
    leaked = after[0] > before[0] + 8 or after[1] > before[1] + 8 or after[2] > before[2] + 8
    if leaked:
        print("LEAK: resources grew")
    return 1 if errors or leaked else 0


if __name__ == "__main__":
    raise SystemExit(main())
