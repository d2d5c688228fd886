"""A Python twin of the batch-size rule in src/cyjob/_batching.pyx, and a
discrete-event simulation of a call (dispatch window, look-ahead on lazy
input, FIFO workers) driven by synthetic task durations and a simulated clock.

The twin is the oracle for a hypothesis test against the compiled sizer; the
simulation lets tests assert on makespans and batch counts without a clock.
"""

import heapq
import math

GROWTH = 2.0
TAIL_SHARE = 8.0
BALANCE = 2.0
MIN_BATCH_NS = 2e6
MIN_SPLIT_NS = 50e3
SMOOTHING = 0.35


class PyBatchSizer:
    def __init__(self, n_workers, fixed_size=0, max_size=10_000, target_seconds=0.5,
                 min_batch_seconds=MIN_BATCH_NS / 1e9):
        self.n_workers = n_workers
        self.fixed_size = fixed_size
        self.max_size = max_size
        self.target_ns = target_seconds * 1e9
        self.min_batch_ns = min(min_batch_seconds * 1e9, self.target_ns)
        self.ns_per_task = 0.0
        self.work_ns = 0.0
        self.n_observed = 0
        self.last_size = 0

    def observe(self, size, duration_ns):
        if size <= 0:
            return
        duration_ns = max(duration_ns, 1.0)
        per_task = duration_ns / size
        if self.n_observed == 0:
            self.ns_per_task = per_task
        else:
            self.ns_per_task += SMOOTHING * (per_task - self.ns_per_task)
        self.work_ns += duration_ns
        self.n_observed += 1

    def next_size(self, remaining):
        if remaining == 0:
            return 0
        if self.fixed_size > 0:
            size = float(self.fixed_size)
        elif self.n_observed == 0:
            size = 1.0
        else:
            budget = self.work_ns / (TAIL_SHARE * self.n_workers)
            budget = max(budget, self.min_batch_ns)
            budget = min(budget, self.target_ns)
            size = budget / self.ns_per_task
            if self.last_size > 0:
                size = min(size, GROWTH * self.last_size)
            size = min(size, self.max_size)
            if remaining > 0 and remaining * self.ns_per_task > MIN_SPLIT_NS:
                size = min(size, math.ceil(remaining / (BALANCE * self.n_workers)))
            size = max(size, 1.0)
        if remaining > 0:
            size = min(size, remaining)
        self.last_size = int(size)
        return self.last_size


def simulate(durations_ns, n_workers, sizer, window=None, lazy=False, overhead_ns=0.0):
    """Simulated makespan of running tasks with the given durations.

    Mirrors ``cyjob._dispatch.Call``: at most ``window`` batches in flight; a lazy
    input is read ``n_workers * last_size`` tasks ahead, and its length is
    known only once a read comes back short.  ``overhead_ns`` is added to each
    batch (dispatch cost).  Returns (makespan_ns, batch_sizes).
    """
    total = len(durations_ns)
    prefix = [0.0]
    for d in durations_ns:
        prefix.append(prefix[-1] + d)
    window = window or 2 * n_workers
    state = {"taken": 0, "pulled": 0, "known": not lazy}

    def remaining():
        if not state["known"]:
            lookahead = n_workers * (sizer.last_size if sizer.last_size > 0 else 1)
            have = state["pulled"] - state["taken"]
            if have < lookahead:
                want = lookahead - have
                got = min(want, total - state["pulled"])
                state["pulled"] += got
                if got < want:
                    state["known"] = True
        if not state["known"]:
            return -1
        return total - state["taken"]

    queue = []          # batches waiting for a worker: (start, size)
    free_at = [0.0] * n_workers
    heapq.heapify(free_at)
    running = []        # heap of (end_time, start, size, duration)
    sizes = []
    in_flight = 0
    now = 0.0

    def dispatch():
        nonlocal in_flight
        while in_flight < window:
            size = sizer.next_size(remaining())
            if size <= 0:
                return
            start = state["taken"]
            size = min(size, total - start)
            if size <= 0:
                return
            state["taken"] += size
            state["pulled"] = max(state["pulled"], state["taken"])
            queue.append((start, size))
            sizes.append(size)
            in_flight += 1

    idle = n_workers
    dispatch()
    while queue or running:
        while queue and idle > 0:
            start, size = queue.pop(0)
            duration = prefix[start + size] - prefix[start] + overhead_ns
            heapq.heappush(running, (now + duration, start, size, duration))
            idle -= 1
        end, start, size, duration = heapq.heappop(running)
        now = end
        idle += 1
        in_flight -= 1
        sizer.observe(size, duration)
        dispatch()
    return now, sizes
