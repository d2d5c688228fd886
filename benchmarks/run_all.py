"""Run every benchmark, print their tables, and optionally put them in the README.

    python benchmarks/run_all.py            # print
    python benchmarks/run_all.py --readme   # print, then refresh README.md

Exits 1 if any benchmark missed a target.  The README's numbers come only
from here.
"""

import os
import platform
import re
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
README = HERE.parent / "README.md"
SCRIPTS = sorted(p for p in HERE.glob("bench_*.py"))
START, END = "<!-- benchmark-results:start -->", "<!-- benchmark-results:end -->"


def machine():
    import numpy

    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            names = re.findall(r"model name\s*:\s*(.*)", f.read())
        if names:
            model = names[0]
    except OSError:
        pass
    return (f"{cpus} CPUs ({model}), Python {platform.python_version()}, "
            f"numpy {numpy.__version__}, {platform.system()} {platform.release()}")


def main(argv):
    tables, failed = [], []
    for script in SCRIPTS:
        print(f"== {script.name}", flush=True)
        proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True)
        sys.stdout.write(proc.stdout)
        sys.stderr.write(proc.stderr)
        tables.append(proc.stdout.strip())
        if proc.returncode != 0:
            failed.append(script.name)
    if "--readme" in argv:
        body = (f"Measured on {machine()} by `benchmarks/run_all.py`:\n\n"
                + "\n\n".join(tables))
        text = README.read_text()
        text = re.sub(re.escape(START) + ".*?" + re.escape(END),
                      lambda _: f"{START}\n{body}\n{END}", text, flags=re.S)
        README.write_text(text)
    if failed:
        print("targets missed in: " + ", ".join(failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
