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


def verbose_stream(verbose):
    """Where messages go at this verbosity: stderr, stdout from 50 (joblib's rule)."""
    return sys.stderr if verbose < 50 else sys.stdout


class VerboseReporter:
    """Prints "Done 10 out of 100 | elapsed: 0.1s" lines through ``printer``
    (``Parallel._print``: "[Parallel(n_jobs=2)]: " first, stderr below
    verbose=50, stdout from 50), more often as ``verbose`` grows.

    A line is printed only when the count of finished tasks moved since the
    last one.  With a progress bar (``above``), the bar is cleared before
    each line and redrawn after it, so the two never share a line.
    """

    def __init__(self, printer, verbose, n_tasks=None, above=None):
        self.printer = printer
        self.verbose = verbose
        self.n_tasks = n_tasks
        self.above = above
        self.start = time.time()
        self.n_reports = 0
        self.last_done = -1

    def _print(self, msg):
        bar = self.above
        if bar is not None:
            bar.clear()
        self.printer(msg)
        if bar is not None:
            bar.redraw()

    def say(self, msg):
        """A note on how the call runs (workers replaced...), at any verbosity."""
        self._print(msg)

    def __call__(self, call):
        # (Called once per batch: what only a printed line needs is worked
        # out after the checks that skip most batches.)
        total = call.n_total if call.n_total >= 0 else self.n_tasks
        done = call.n_completed_tasks
        if not call.finished:
            if total and done >= total:
                return  # the "finished" line follows (joblib prints only that one)
            if done == self.last_done:
                return  # several batches handed back, no new task finished
            index = self.n_reports
            self.n_reports += 1
            if _verbosity_filter(index, self.verbose):
                return
        width = floor(log10(total)) + 1 if total else 3
        elapsed = time.time() - self.start
        if call.finished:
            self._print(f"Done {done:{width}d} out of {done:{width}d} | elapsed: "
                        f"{short_format_time(elapsed)} finished")
            return
        self.last_done = done
        fmt_time = f"| elapsed: {short_format_time(elapsed)}"
        if total:
            self._print(f"Done {done:{width}d} out of {total:{width}d} {fmt_time}")
        else:
            pad = " " * (len("out of ") + width - len("tasks"))
            self._print(f"Done {done:{width}d} tasks {pad}{fmt_time}")


class _Nowhere:
    """A stream that drops what is written: stands for a missing
    ``sys.stderr`` (None under pythonw and some services), where a bar has
    nowhere to go and must not fail the call it reports on."""

    def write(self, text):
        return len(text)

    def flush(self):
        pass


class ProgressBar:
    """A progress bar on stderr, updated once per finished batch: tqdm when it
    is installed, else a small built-in bar (count, rate, ETA)."""

    def __init__(self, file=None, min_interval=0.1, use_tqdm=True):
        if file is None:
            file = sys.stderr if sys.stderr is not None else _Nowhere()
        self.file = file
        self.min_interval = min_interval
        self.start = time.monotonic()
        self.last_draw = 0.0
        self.last_line = ""  # what the built-in bar shows now
        self.drawn = 0       # its width on screen
        self.tqdm = None
        if use_tqdm:
            try:
                from tqdm import tqdm
            except ImportError:
                pass
            else:
                self.tqdm = tqdm(total=None, file=self.file, unit="task", leave=True)

    def clear(self):
        """Blank the bar's line (a message is about to be printed)."""
        if self.tqdm is not None:
            self.tqdm.clear()
        elif self.drawn:
            self.file.write("\r" + " " * self.drawn + "\r")
            self.file.flush()
            self.drawn = 0

    def redraw(self):
        """Draw the bar again after a message."""
        if self.tqdm is not None:
            self.tqdm.refresh()
        elif self.last_line:
            self.file.write(self.last_line)
            self.file.flush()
            self.drawn = len(self.last_line) - 1

    def __call__(self, call):
        total = call.n_total if call.n_total >= 0 else None
        done = call.n_completed_tasks
        if self.tqdm is not None:
            if total is not None and self.tqdm.total != total:
                self.tqdm.total = total
                self.tqdm.refresh()
            self.tqdm.update(done - self.tqdm.n)
            if call.finished:
                self.tqdm.close()
            return
        now = time.monotonic()
        if not call.finished and now - self.last_draw < self.min_interval:
            return
        self.last_draw = now
        self.last_line = "\r" + self.line(done, total, now - self.start)
        self.file.write(self.last_line)
        self.drawn = len(self.last_line) - 1
        if call.finished:
            self.file.write("\n")
            self.last_line, self.drawn = "", 0
        self.file.flush()

    def close(self):
        """End the bar where it stands, on a line of its own: a call that
        fails or is closed early never sends the finished report that
        closes it, and the traceback or the next output must not be
        written after it on its line (nor tqdm's bar drawn again when
        collected).  Does nothing once the bar is closed."""
        if self.tqdm is not None:
            self.tqdm.close()
        elif self.drawn:
            self.file.write("\n")
            self.file.flush()
            self.last_line, self.drawn = "", 0

    @staticmethod
    def line(done, total, elapsed, width=30):
        rate = done / elapsed if elapsed > 0 else 0.0
        if total:
            filled = int(width * done / total)
            bar = "#" * filled + "." * (width - filled)
            eta = (total - done) / rate if rate > 0 else float("inf")
            eta_text = time.strftime("%H:%M:%S", time.gmtime(eta)) if eta != float("inf") else "?"
            return f"[{bar}] {done}/{total} tasks | {rate:,.1f} tasks/s | ETA {eta_text}"
        return f"{done} tasks | {rate:,.1f} tasks/s | elapsed {elapsed:.1f}s"


def combine(*callbacks):
    """One progress callback calling each of the given ones (None are skipped)."""
    callbacks = [cb for cb in callbacks if cb is not None]
    if not callbacks:
        return None
    if len(callbacks) == 1:
        return callbacks[0]

    def report(call):
        for cb in callbacks:
            cb(call)
    return report
