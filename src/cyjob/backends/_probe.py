"""What the default backend's probe concludes from the batches it measured.

A pure function of recorded figures (``decide``), so that tests drive it with
numbers recorded on idle and loaded machines, and no test asserts on time.

The figures of one batch, read by the thread that ran it, around the batch
(``cyjob._core``): its start and end (monotonic), the CPU time of that thread,
and the thread's own voluntary and involuntary context switches
(``getrusage(RUSAGE_THREAD)``).

Why switch counts: CPU time against wall time cannot tell "waiting for the
GIL" from "the CPU was taken by another program".  Both leave a thread off
its CPU; only the first makes it *block* (a voluntary switch: a futex wait
on the GIL, a sleep, I/O).  Measured here, over ~80 ms of two overlapping
batches per thread::

    numpy (releases the GIL), idle or loaded   voluntary 0-2    involuntary 9-22
    pure Python (holds the GIL), 2 busy loops  voluntary 14-22  involuntary 6-8
    time.sleep(0.002) x 8                      voluntary 8-9    involuntary 0-2

and the involuntary count is what grows with the load (3-12 idle, 41-59 on
a loaded machine, issue 15).

Contention only shows when two batches run *at the same time*: two batches
one after the other prove nothing either way (the old probe decided from
such pairs, and sent numpy work to processes).  So the GIL question is
answered only from batches that overlapped, over enough overlapping time;
until then the verdict is "keep measuring", and a probe that never gets
clear evidence leaves the call on threads (``last_chance``).
"""

from collections import namedtuple

__all__ = ["BatchFigures", "Verdict", "decide", "THREADS", "PROCESSES", "INLINE"]

THREADS, PROCESSES, INLINE = "threading", "processes", "inline"

#: One measured batch.  Times in ns; ``voluntary`` / ``involuntary`` are the
#: running thread's context switches during the batch, counted from when a
#: pool worker took it and began waiting for the GIL, ``waited_ns`` before
#: ``started_ns`` (0 for a batch the caller ran: it held the GIL already).
BatchFigures = namedtuple(
    "BatchFigures", "started_ns finished_ns cpu_ns n_tasks voluntary involuntary waited_ns",
    defaults=(0,))

#: ``kind`` is None while the evidence is not enough ("keep measuring");
#: ``remember`` says whether later calls may reuse it without measuring.
Verdict = namedtuple("Verdict", "kind ns_per_task reason remember")

# Below this run time per task (the batch's wall time less what other
# programs took from it), even a GIL-releasing task gains nothing from
# threads: a plain loop in the caller's thread is fastest.
TINY_TASK_NS = 20_000
# The GIL question needs this much time during which two or more batches ran:
# a GIL-bound thread is made to wait at least once per switch interval (5 ms).
MIN_OVERLAP_NS = 10_000_000
# A batch counts as overlapping when another one ran beside it for this share
# of its own wall time.
OVERLAP_SHARE = 0.5
# Voluntary switches per 10 ms of CPU time of overlapping batches.  A
# GIL-bound thread beside another one must hand the GIL over after at most a
# switch interval (5 ms) of CPU, then wait for it back: 5-10 per 10 ms
# measured, idle or loaded.  A GIL-free thread blocks only at the few points
# a task takes the GIL back (per task, not per CPU time): 0.2-0.8 measured.
# (Per wall time instead, a loaded machine stretches the GIL-bound figure
# down towards the GIL-free one: waits get longer, not more frequent.)
FREE_SWITCHES = 1.5
CONTENDED_SWITCHES = 3.0
# Far above what the GIL causes: threads that block this often per CPU time
# mostly wait (sleep, I/O: ~500 measured for time.sleep(0.002) tasks), even
# when being woken on a loaded machine makes them look CPU-hungry.
WAITING_SWITCHES = 100.0
# CPUs used per wall second by overlapping batches that proves GIL release.
PARALLEL_EFFICIENCY = 1.3
# CPUs the call wanted (used, or was preempted from) per wall second, under
# which its tasks mostly wait (sleep, I/O): threads overlap them...
WAITING_DEMAND = 0.35
# ...and over which they cannot all be waiting for one GIL (measured: 1.05-1.42
# for GIL-bound threads, 1.61-1.77 for numpy ones, idle or loaded).
PARALLEL_DEMAND = 1.5
# A GIL-bound task using this much CPU is worth sending to a process: pickling
# a batch costs ~0.15-10 us per task (PERFORMANCE.md), a round trip ~100 us.
PROCESS_MIN_TASK_NS = 50_000


def _begin(b):
    """When the batch's thread wanted to run it (its wait for the GIL counts:
    that wait is what GIL-bound work does to a second thread)."""
    return b.started_ns - b.waited_ns


def _wall(b):
    return max(b.finished_ns - _begin(b), 0)


def _preempted_ns(b):
    """The share of a batch's off-CPU time that other programs (or threads)
    took from it: its off-CPU time split by its own switch counts."""
    off = _wall(b) - b.cpu_ns
    switches = b.voluntary + b.involuntary
    if off <= 0 or switches <= 0:
        return 0.0
    return off * b.involuntary / switches


def _union_ns(intervals):
    total, end = 0, None
    for start, finish in sorted(intervals):
        if end is None or start > end:
            total += finish - start
            end = finish
        elif finish > end:
            total += finish - end
            end = finish
    return total


def _overlap_ns(i, batches):
    """Time during which batch ``i`` ran beside at least one other batch."""
    b = batches[i]
    clipped = []
    for j, other in enumerate(batches):
        if j == i:
            continue
        start = max(_begin(b), _begin(other))
        finish = min(b.finished_ns, other.finished_ns)
        if finish > start:
            clipped.append((start, finish))
    return _union_ns(clipped)


def _at_least_two_ns(batches):
    """Time during which two or more batches ran at once."""
    events = []
    for b in batches:
        if b.finished_ns > _begin(b):
            events.append((_begin(b), 1))
            events.append((b.finished_ns, -1))
    events.sort()
    running, since, total = 0, 0, 0
    for t, step in events:
        if running >= 2:
            total += t - since
        running += step
        since = t
    return total


def running_ns(batches):
    """``(busy, together)``: the wall time during which at least one of the
    batches ran, and during which two or more did."""
    ran = [b for b in batches if b.finished_ns > _begin(b)]
    return _union_ns([(_begin(b), b.finished_ns) for b in ran]), _at_least_two_ns(ran)


def figures_text(per_task, efficiency=None, demand=None, switches=None, overlap=None):
    text = f"{per_task / 1e3:.1f} us per task"
    if overlap is not None:
        text += f", {overlap / 1e6:.1f} ms overlapping"
    if efficiency is not None:
        text += f", parallel efficiency {efficiency:.2f}, demand {demand:.2f} CPUs"
    if switches is not None:
        text += f", {switches:.2f} waits per 10 ms of CPU"
    return text


def decide(batches, n_workers, last_chance=False):
    """The verdict on a call's probe.

    Parameters
    ----------
    batches : sequence of BatchFigures
        The finished probe batches (any order).
    n_workers : int
        Batches that can run at once.
    last_chance : bool
        The probe has run long enough: answer threads rather than "keep
        measuring" when the evidence is unclear.

    Returns
    -------
    Verdict
        ``kind`` is "threading", "processes", "inline", or None to keep
        measuring.
    """
    batches = [b for b in batches if b.n_tasks > 0]
    unclear = Verdict(None, 0.0, "", False)
    if not batches:
        return unclear
    n_tasks = sum(b.n_tasks for b in batches)
    # Run time per task on a CPU of its own: wall time less what other
    # programs took (a tiny batch preempted once must not look heavy).
    per_task = sum(max(b.finished_ns - b.started_ns - _preempted_ns(b), b.cpu_ns)
                   for b in batches) / n_tasks
    if per_task < TINY_TASK_NS:
        if len(batches) >= n_workers or last_chance:
            return Verdict(INLINE, per_task, "tasks too small to gain from workers: "
                           + figures_text(per_task), True)
        return unclear

    overlapping = [b for i, b in enumerate(batches)
                   if _overlap_ns(i, batches) >= OVERLAP_SHARE * _wall(b) > 0]
    overlap = _at_least_two_ns(overlapping)
    if n_workers < 2 or overlap < MIN_OVERLAP_NS:
        if last_chance:
            return Verdict(THREADS, per_task, "no batches ran at the same time to "
                           "tell GIL waits from a busy machine: staying on threads ("
                           + figures_text(per_task, overlap=overlap) + ")", False)
        return unclear

    span = _union_ns([(_begin(b), b.finished_ns) for b in overlapping])
    cpu = sum(b.cpu_ns for b in overlapping)
    efficiency = cpu / span
    demand = (cpu + sum(_preempted_ns(b) for b in overlapping)) / span
    switches = 10e6 * sum(b.voluntary for b in overlapping) / max(cpu, 1)
    figures = figures_text(per_task, efficiency, demand, switches, overlap)
    if efficiency >= PARALLEL_EFFICIENCY:
        return Verdict(THREADS, per_task, "tasks release the GIL: " + figures, True)
    if demand < WAITING_DEMAND or switches >= WAITING_SWITCHES:
        return Verdict(THREADS, per_task, "tasks mostly wait (I/O, sleep): " + figures, True)
    if switches < CONTENDED_SWITCHES and (switches <= FREE_SWITCHES
                                          or demand >= PARALLEL_DEMAND):
        # Threads that ran side by side and (almost) never blocked, or that
        # wanted more than one CPU between them: what kept them from whole
        # CPUs was other programs, not the GIL.
        return Verdict(THREADS, per_task, "tasks release the GIL (threads rarely "
                       "waited; other programs took the CPUs): " + figures, True)
    if switches >= CONTENDED_SWITCHES and demand < PARALLEL_DEMAND:
        cpu_per_task = sum(b.cpu_ns for b in batches) / n_tasks
        if cpu_per_task >= PROCESS_MIN_TASK_NS:
            return Verdict(PROCESSES, cpu_per_task, "tasks hold the GIL: " + figures, True)
        return Verdict(INLINE, cpu_per_task, "tasks hold the GIL and are small: " + figures, True)
    if last_chance:
        return Verdict(THREADS, per_task, "evidence unclear: staying on threads ("
                       + figures + ")", False)
    return unclear
