"""Issue 13 targets: cyjob.dump / cyjob.load against np.save / np.load and
joblib.dump / joblib.load.

Contenders run interleaved in this one run (cyjob.bench.interleaved); each
keeps its median.  Files go to a tmpfs directory (/dev/shm) unless --dir
says otherwise: the figures then measure the software, not a shared disk's
write-back.  Compression uses every CPU (cyjob's thread pool; joblib uses
one).  Prints a table of ratios; exits 1 if a target is missed.

    PYTHONPATH=src python benchmarks/bench_persistence.py [--rounds 5] [--quick] [--dir D]
"""

import argparse
import os
import shutil
import sys
import tempfile

import numpy as np

import cyjob
from cyjob.bench import Report, interleaved
from cyjob.persist.atomic import wait_for_releases

try:
    import joblib
except ImportError:  # the targets are ratios to joblib: nothing to compare
    sys.exit("bench_persistence needs joblib==1.6.0 (pip install cyjob[bench])")

MB = 2**20


def uncompressed(report, d, rounds, nbytes):
    a = np.random.default_rng(0).standard_normal(nbytes // 8)
    paths = {k: os.path.join(d, f"plain_{k}") for k in ("np.npy", "cy.pkl", "jl.pkl")}
    dumps = interleaved({
        "np.save": lambda: np.save(paths["np.npy"], a),
        "cyjob": lambda: cyjob.dump(a, paths["cy.pkl"]),
        "joblib": lambda: joblib.dump(a, paths["jl.pkl"]),
    }, rounds=rounds, between=wait_for_releases)  # cyjob's freeing never slows the next one
    loads = interleaved({
        "np.load": lambda: np.load(paths["np.npy"]),
        "cyjob": lambda: cyjob.load(paths["cy.pkl"]),
        "joblib": lambda: joblib.load(paths["jl.pkl"]),
    }, rounds=rounds)
    assert np.array_equal(cyjob.load(paths["cy.pkl"]), a)
    mb = nbytes // MB
    report.add(f"dump {mb} MB float64: cyjob / np.save", dumps["cyjob"] / dumps["np.save"], 1.1)
    report.add(f"dump {mb} MB float64: cyjob / joblib", dumps["cyjob"] / dumps["joblib"], 0.8)
    report.add(f"load {mb} MB float64: cyjob / np.load", loads["cyjob"] / loads["np.load"], 1.1)
    report.add(f"load {mb} MB float64: cyjob / joblib", loads["cyjob"] / loads["joblib"], 0.8)
    for name, t in list(dumps.items()):
        report.add(f"  dump {name}", t * 1e3, unit=" ms")
    # Not a target: cyjob's dump returns before the file it replaced is freed
    # (a helper thread does it; np.save and joblib free it when they truncate).
    # This is the dump with that freeing waited for.
    freed = interleaved({
        "cyjob": lambda: (cyjob.dump(a, paths["cy.pkl"]), wait_for_releases()),
        "joblib": lambda: joblib.dump(a, paths["jl.pkl"]),
    }, rounds=rounds)
    report.add("  dump cyjob, replaced file freed before the clock stops: / joblib",
               freed["cyjob"] / freed["joblib"])
    for name, t in list(loads.items()):
        report.add(f"  load {name}", t * 1e3, unit=" ms")

    mapped = interleaved({"cyjob": lambda: cyjob.load(paths["cy.pkl"], mmap_mode="r"),
                          "joblib": lambda: joblib.load(paths["jl.pkl"], mmap_mode="r")},
                         rounds=max(rounds, 5), repeat=20)
    m = cyjob.load(paths["cy.pkl"], mmap_mode="r")
    assert isinstance(m, np.memmap) and m[12345] == a[12345]
    del m
    report.add(f"load(mmap_mode='r') of the {mb} MB file: cyjob", mapped["cyjob"] * 1e3, 1.0,
               unit=" ms")
    report.add("  load(mmap_mode='r'): joblib", mapped["joblib"] * 1e3, unit=" ms")
    for p in paths.values():
        os.unlink(p)


def object_dict(report, d, rounds, n=200_000):
    value = {f"key-{i}": (i, float(i) / 3, f"value-{i}") for i in range(n)}
    cy_path, jl_path = os.path.join(d, "dict_cy.pkl"), os.path.join(d, "dict_jl.pkl")

    def cy():
        cyjob.dump(value, cy_path)
        return cyjob.load(cy_path)

    def jl():
        joblib.dump(value, jl_path)
        return joblib.load(jl_path)

    times = interleaved({"cyjob": cy, "joblib": jl}, rounds=rounds, between=wait_for_releases)
    assert cy() == value
    report.add(f"dump + load of a {n:,}-entry str -> tuple dict: cyjob / joblib",
               times["cyjob"] / times["joblib"], 0.2)
    report.add("  dump + load dict cyjob", times["cyjob"] * 1e3, unit=" ms")
    report.add("  dump + load dict joblib", times["joblib"] * 1e3, unit=" ms")
    os.unlink(cy_path)
    os.unlink(jl_path)


def compressed(report, d, rounds, nbytes):
    a = np.round(np.random.default_rng(0).standard_normal(nbytes // 8), 2)
    paths = {k: os.path.join(d, f"z_{k}.pkl") for k in ("cy_zstd", "cy_zlib", "jl_zlib")}
    dumps = interleaved({
        "cy_zstd": lambda: cyjob.dump(a, paths["cy_zstd"], compress=("zstd", 3)),
        "cy_zlib": lambda: cyjob.dump(a, paths["cy_zlib"], compress=("zlib", 3)),
        "jl_zlib": lambda: joblib.dump(a, paths["jl_zlib"], compress=("zlib", 3)),
    }, rounds=rounds, warmup=0, between=wait_for_releases)
    loads = interleaved({
        "cy_zstd": lambda: cyjob.load(paths["cy_zstd"]),
        "cy_zlib": lambda: cyjob.load(paths["cy_zlib"]),
        "jl_zlib": lambda: joblib.load(paths["jl_zlib"]),
    }, rounds=rounds)
    for key in ("cy_zstd", "cy_zlib"):
        assert np.array_equal(cyjob.load(paths[key]), a)
    sizes = {k: os.path.getsize(p) for k, p in paths.items()}
    mb = nbytes // MB
    report.add(f"compressed dump, {mb} MB low-entropy: cyjob zstd-3 / joblib zlib-3",
               dumps["cy_zstd"] / dumps["jl_zlib"], 0.2)
    report.add("  file size: cyjob zstd-3 / joblib zlib-3", sizes["cy_zstd"] / sizes["jl_zlib"],
               1.1)
    report.add("compressed dump: cyjob zlib-3 / joblib zlib-3",
               dumps["cy_zlib"] / dumps["jl_zlib"], 0.6)
    report.add("load of the zstd-3 file: cyjob / joblib's zlib-3 load",
               loads["cy_zstd"] / loads["jl_zlib"], 0.7)
    report.add("load of the zlib-3 file: cyjob / joblib", loads["cy_zlib"] / loads["jl_zlib"],
               0.7)
    for name, t in dumps.items():
        report.add(f"  dump {name}", t * 1e3, unit=" ms")
    for name, t in loads.items():
        report.add(f"  load {name}", t * 1e3, unit=" ms")
    for name, size in sizes.items():
        report.add(f"  size {name} (ratio {a.nbytes / size:.2f})", size / MB, unit=" MB")
    for p in paths.values():
        os.unlink(p)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="fewer rounds, for a smoke run")
    parser.add_argument("--dir", default="/dev/shm" if os.path.isdir("/dev/shm") else None,
                        help="where the files go (default: /dev/shm, a tmpfs)")
    args = parser.parse_args(argv)
    rounds = 2 if args.quick else args.rounds
    report = Report(f"cyjob.dump / cyjob.load vs numpy and joblib ({cyjob.cpu_count()} CPUs, "
                    f"files in {args.dir or tempfile.gettempdir()})")
    d = tempfile.mkdtemp(prefix="cyjob-bench-persist-", dir=args.dir)
    try:
        uncompressed(report, d, rounds, 200 * MB)
        object_dict(report, d, rounds)
        compressed(report, d, max(2, rounds - 2), 200 * MB)
    finally:
        shutil.rmtree(d, ignore_errors=True)
    report.print()
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main())
