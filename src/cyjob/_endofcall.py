"""Inner threads at the end of a call: the CPUs its idle workers leave.

A call of n_jobs workers caps each batch's OpenMP threads at CPUs / n_jobs,
so that n_jobs batches side by side never oversubscribe the CPUs (joblib's
loky does the same).  At the end of a call there are fewer batches left
than workers: ``cross_val_score`` of 5 folds on 2 workers runs its last
fold alone, on one thread, while the other CPU idles (a sixth of the call).
A batch that starts then, with nothing of its call left to start, may use
CPUs / (the call's batches still running, itself included): the last fold
gets both CPUs.

scikit-learn sizes its OpenMP loops once per fit (``omp_get_max_threads``
as the fit starts), so the number is decided as the batch starts, never
changed while it runs.  The fold before the last one usually ends within
milliseconds of the last fold's start: a batch whose call's other batches
are about to end (by the time the call's finished batches took) waits for
them, a little (``HOLD_FRACTION`` of its own expected time at most), rather
than starting on one thread or sharing a CPU with them.

Never above what the user allows (``inner_max_num_threads``,
``OMP_NUM_THREADS``, a threadpoolctl limit in the calling thread), never
above the CPUs, and not on a machine where other programs want the CPUs:
the call's worker processes waited for a CPU (``/proc/<pid>/schedstat``)
more than ``CONTENDED_WAIT`` of their run time so far.  An OpenMP team
sharing a CPU with a busy process spins at every barrier: a
HistGradientBoosting fit measured 10-40x slower on 2 threads than on one
while another program ran here.

:func:`end_of_call_threads` is the rule, on figures; :class:`EndOfCall`
gathers them for one joblib call (the bridge's process batches: the
process pool asks it as each batch starts, ``pool._Pool._held``).
"""

import os
import time

from cyjob._cpus import cpu_count

__all__ = ["EndOfCall", "contended", "end_of_call_threads", "user_ceiling"]

# A batch may wait for its call's other batches that should end within this
# fraction of its own expected run time, and no longer: a second thread
# gains a HistGradientBoosting fold ~15-20% here, a wait costs one CPU.
HOLD_FRACTION = 0.1
# The call's workers waited for a CPU more than this fraction of their run
# time: other programs want the CPUs (~0.01 on a quiet machine, 0.3-0.5 with
# one busy process per CPU beside the call).
CONTENDED_WAIT = 0.1
# Less run time than this in the workers is no evidence either way.
MIN_EVIDENCE_NS = 20e6
# Batches expected to run shorter than this keep their cap: starting OpenMP
# threads would cost more than they gain.
MIN_TASK_NS = 10e6


def end_of_call_threads(cpus, base, ceiling, more_to_start, others, expected_ns,
                        contended):
    """The OpenMP threads a batch starting now may use, and whether it had
    better wait a moment for the call's batches about to end.

    Parameters
    ----------
    cpus : int
        The machine's CPUs (``cyjob.cpu_count()``).
    base : int
        The cap of every batch of the call (CPUs / n_jobs, or the user's
        ``inner_max_num_threads``).
    ceiling : int
        The most the user allows (``OMP_NUM_THREADS``, a threadpoolctl limit
        in the calling thread, ``inner_max_num_threads``).
    more_to_start : bool
        Batches of the call are waiting to start, or may still be submitted.
    others : list of (float or None)
        For each other batch of the call still running: its expected
        remaining run time in ns (negative: overdue), None if unknown.
    expected_ns : float or None
        This batch's expected run time (None: none of the call finished
        yet).  Under ``MIN_TASK_NS``, or unknown, it keeps ``base``.
    contended : bool
        Other programs want the CPUs.

    Returns
    -------
    threads : int
        ``base`` unless the call's workers are idle at its end.
    wait : bool
        True if waiting for the batches about to end would give it more.
    """
    top = min(ceiling, cpus)
    if (more_to_start or contended or top <= base or expected_ns is None
            or expected_ns < MIN_TASK_NS):
        return base, False
    threads = min(top, max(base, cpus // (len(others) + 1)))
    soon = HOLD_FRACTION * expected_ns
    staying = sum(1 for r in others if r is None or r > soon)
    if min(top, max(base, cpus // (staying + 1))) > threads:
        return threads, True
    return threads, False


def contended(before, after):
    """True if worker processes waited for a CPU more than
    ``CONTENDED_WAIT`` of their run time between two readings (pid ->
    (run ns, wait ns) from ``/proc/<pid>/schedstat``), or ran too little
    for the figures to say (``MIN_EVIDENCE_NS``)."""
    run = wait = 0
    for pid, (run1, wait1) in after.items():
        start = before.get(pid)
        if start is not None:
            run += run1 - start[0]
            wait += wait1 - start[1]
    if run < MIN_EVIDENCE_NS:
        return True
    return wait > CONTENDED_WAIT * run


def _env_threads(name):
    value = os.environ.get(name, "")
    try:
        return int(value.split(",")[0])
    except ValueError:
        return None


def user_ceiling(inner_max_num_threads, runtimes):
    """The most OpenMP threads a batch of a call made now may use: the
    user's ``inner_max_num_threads``, ``OMP_NUM_THREADS`` and
    ``OMP_THREAD_LIMIT``, and the calling thread's own OpenMP limit (a
    threadpoolctl limit, or the variables read when the runtime loaded;
    ``runtimes`` as from ``_threadcaps.runtimes()``)."""
    ceiling = cpu_count()
    limits = [inner_max_num_threads, _env_threads("OMP_NUM_THREADS"),
              _env_threads("OMP_THREAD_LIMIT")]
    limits += [current() for _, _, current in runtimes]
    for limit in limits:
        if limit is not None and limit > 0:
            ceiling = min(ceiling, limit)
    return ceiling


def runnable_now(at_most=1, samples=3, interval=0.0005):
    """Threads on or waiting for a CPU right now, machine-wide, the caller
    included (``/proc/loadavg``'s 4th field), or None: the least of up to
    ``samples`` readings over a millisecond, read until one is ``at_most``
    (a worker that just sent its results back is on a CPU for a moment
    more; a busy program stays there)."""
    least = None
    for i in range(samples):
        if i:
            time.sleep(interval)
        try:
            with open("/proc/loadavg", "rb") as f:
                n = int(f.read().split()[3].split(b"/")[0])
        except (OSError, ValueError, IndexError):
            return None
        least = n if least is None else min(least, n)
        if least <= at_most:
            break
    return least


def _schedstat(pid):
    """(ns on a CPU, ns waiting for one) of process ``pid``, or None."""
    try:
        with open(f"/proc/{pid}/schedstat", "rb") as f:
            run, wait = f.read().split()[:2]
        return int(run), int(wait)
    except (OSError, ValueError):
        return None


class EndOfCall:
    """What the batches of one joblib call on processes may use as they
    start: the figures :func:`end_of_call_threads` needs, gathered.

    Parameters
    ----------
    base, ceiling : int
        As for :func:`end_of_call_threads`.
    more_to_come : callable
        ``more_to_come()``: True while the caller may submit more batches
        (joblib's iterator not exhausted).
    worker_pids : callable
        ``worker_pids()``: the pids of the pool's workers.
    """

    def __init__(self, base, ceiling, more_to_come, worker_pids):
        self.base = base
        self.ceiling = ceiling
        self.cpus = cpu_count()
        self.more_to_come = more_to_come
        self.worker_pids = worker_pids
        self.ns_per_task = []   # of the call's finished batches (worker run time)
        self._sched = None      # pid -> schedstat at the call's first batch

    @property
    def may_raise(self):
        return min(self.ceiling, self.cpus) > self.base

    def finished(self, n_tasks, duration_ns):
        """A batch of the call ran ``n_tasks`` in ``duration_ns``."""
        if n_tasks and duration_ns > 0:
            self.ns_per_task.append(duration_ns / n_tasks)

    def at_start(self, n_tasks, running, waiting, held_since_ns, elsewhere=0):
        """``(threads or None, hold_until or None)`` for a batch of
        ``n_tasks`` about to start: ``running`` the (started_ns, n_tasks)
        of the call's batches running on processes, ``waiting`` how many
        wait to start, ``elsewhere`` how many run or wait elsewhere (threads);
        ``held_since_ns`` when it was first held back (None: it was not).
        ``hold_until`` is a ``time.monotonic()`` deadline."""
        if not self._sched:  # the first batch (or the pool's workers were booting)
            self._sched = self._read_sched()
        if not self.may_raise:
            return None, None
        if waiting > 0 or elsewhere > 0 or self.more_to_come():
            return None, None
        now = time.monotonic_ns()
        per_task = _median(self.ns_per_task)
        expected = per_task * n_tasks if per_task else None
        if expected is None or expected < MIN_TASK_NS:
            return None, None
        others = [per_task * k - (now - started) if per_task and started else None
                  for started, k in running]
        threads, wait = end_of_call_threads(self.cpus, self.base, self.ceiling, False,
                                            others, expected, self.contended())
        if not wait and threads <= self.base:
            return None, None
        # Right now, no thread but this one and the call's own running
        # batches' may be on a CPU: a program that just started wants one
        # (an OpenMP team sharing a CPU spins at every barrier).  Read
        # before a wait too: a wait that ends in no raise is an idle CPU lost.
        allowed = 1 + len(running) * self.base
        busy = runnable_now(allowed)
        if busy is None or busy > allowed:
            return None, None
        if wait:
            held_since_ns = now if held_since_ns is None else held_since_ns
            deadline_ns = held_since_ns + HOLD_FRACTION * expected
            if now < deadline_ns:
                return None, time.monotonic() + (deadline_ns - now) / 1e9
        if threads <= self.base:
            return None, None
        return threads, None

    def _read_sched(self):
        figures = {}
        for pid in self.worker_pids():
            stat = _schedstat(pid)
            if stat is not None:
                figures[pid] = stat
        return figures

    def contended(self):
        """Other programs want the CPUs: the call's workers waited for one
        too long since its first batch (:func:`contended`)."""
        return contended(self._sched, self._read_sched())


def _median(values):
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[len(ordered) // 2]
