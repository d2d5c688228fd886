"""cyjob against sequential, joblib (loky and threading), concurrent.futures and
multiprocessing.Pool on three workloads, n_jobs=2, warm pools.

Writes benchmarks/results/compare.md (a table of speed-ups over sequential)
and benchmarks/results/compare.png (the same as a bar chart, if matplotlib is
installed), and prints the table.  No targets: this is the overview.
"""

import concurrent.futures as cf
import multiprocessing as mp
import sys
from pathlib import Path

import numpy as np

import cyjob
from cyjob.bench import Report, calibrate_gil_work, gil_work, inc, interleaved, sin_sum

N_JOBS = 2
RESULTS = Path(__file__).resolve().parent / "results"


def workloads():
    rng = np.random.default_rng(0)
    arrays = [rng.random(1_000_000) for _ in range(16)]
    work = calibrate_gil_work(0.002)
    return {
        "50k tiny tasks": (inc, list(range(50_000))),
        "240 GIL-bound tasks of 2 ms": (gil_work, [work] * 240),
        "16 x np.sin(1M floats).sum()": (sin_sum, arrays),
    }


def contenders(func, args, pools):
    thread_pool, process_pool, mp_pool = pools
    chunk = max(1, len(args) // (4 * N_JOBS))
    return {
        "sequential": lambda: [func(a) for a in args],
        "cyjob": lambda: cyjob.Parallel(n_jobs=N_JOBS)(cyjob.delayed(func)(a) for a in args),
        "joblib loky": lambda: joblib.Parallel(n_jobs=N_JOBS)(joblib.delayed(func)(a) for a in args),
        "joblib threading": lambda: joblib.Parallel(n_jobs=N_JOBS, backend="threading")(
            joblib.delayed(func)(a) for a in args),
        "ThreadPoolExecutor": lambda: list(thread_pool.map(func, args)),
        "ProcessPoolExecutor": lambda: list(process_pool.map(func, args, chunksize=chunk)),
        "multiprocessing.Pool": lambda: mp_pool.map(func, args, chunksize=chunk),
    }


def plot(table, path):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    names = list(next(iter(table.values())))
    fig, ax = plt.subplots(figsize=(10, 4.5))
    width = 0.8 / len(names)
    for i, name in enumerate(names):
        xs = [j + i * width for j in range(len(table))]
        ax.bar(xs, [table[w][name] for w in table], width, label=name)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(table))], list(table))
    ax.set_yscale("log")
    ax.axhline(1.0, color="grey", linewidth=0.8)
    ax.set_ylabel("speed-up over sequential (log)")
    ax.set_title(f"n_jobs={N_JOBS}, warm pools, {cyjob.cpu_count()} CPUs")
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return True


def main(rounds=3):
    ctx = mp.get_context("forkserver")
    table = {}
    with cf.ThreadPoolExecutor(N_JOBS) as tp, cf.ProcessPoolExecutor(N_JOBS, mp_context=ctx) as pp, \
            ctx.Pool(N_JOBS) as mpp:
        for label, (func, args) in workloads().items():
            times = interleaved(contenders(func, args, (tp, pp, mpp)), rounds=rounds)
            table[label] = {name: times["sequential"] / t for name, t in times.items()}
    names = list(next(iter(table.values())))
    lines = ["### Speed-up over sequential (higher is better), n_jobs=2, warm pools", "",
             "| workload | " + " | ".join(names) + " |",
             "|---|" + "---:|" * len(names)]
    for label, row in table.items():
        lines.append(f"| {label} | " + " | ".join(f"{row[n]:.2f}x" for n in names) + " |")
    text = "\n".join(lines)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "compare.md").write_text(text + "\n")
    if plot(table, RESULTS / "compare.png"):
        text += "\n\n![speed-up over sequential](benchmarks/results/compare.png)"
    print(text)
    return 0


if __name__ == "__main__":
    import joblib

    sys.exit(main())
