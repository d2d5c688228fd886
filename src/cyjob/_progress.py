"""joblib-style progress messages for ``verbose``."""

import sys
import time
from math import floor, log10, sqrt


def short_format_time(t):
    if t > 60:
        return "%4.1fmin" % (t / 60.0)
    return " %5.1fs" % t


def _verbosity_filter(index, verbose):
    """True when the message for this batch should be skipped (joblib's rule)."""
    if not verbose:
        return True
    elif verbose > 10:
        return False
    if index == 0:
        return False
    verbose = 0.5 * (11 - verbose) ** 2
    return int(sqrt((index + 1) / verbose)) == int(sqrt(index / verbose))


class VerboseReporter:
    """Prints "[Parallel(n_jobs=2)]: Done 10 tasks | elapsed: 0.1s" lines,
    more often as ``verbose`` grows (stderr below 50, stdout from 50)."""

    def __init__(self, label, verbose, n_tasks=None):
        self.label = label
        self.verbose = verbose
        self.n_tasks = n_tasks
        self.start = time.time()
        self.n_reports = 0

    def _print(self, msg):
        writer = sys.stderr if self.verbose < 50 else sys.stdout
        writer.write(f"[{self.label}]: {msg}\n")

    def __call__(self, call):
        total = call.n_total if call.n_total >= 0 else self.n_tasks
        width = floor(log10(total)) + 1 if total else 3
        elapsed = time.time() - self.start
        done = call.n_completed_tasks
        if call.finished:
            self._print(f"Done {done:{width}d} out of {done:{width}d} | elapsed: "
                        f"{short_format_time(elapsed)} finished")
            return
        index = self.n_reports
        self.n_reports += 1
        if _verbosity_filter(index, self.verbose):
            return
        fmt_time = f"| elapsed: {short_format_time(elapsed)}"
        if total:
            self._print(f"Done {done:{width}d} out of {total:{width}d} {fmt_time}")
        else:
            pad = " " * (len("out of ") + width - len("tasks"))
            self._print(f"Done {done:{width}d} tasks {pad}{fmt_time}")
