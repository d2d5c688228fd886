"""The default backend's decision (backends/_probe.decide) on recorded probe
figures: no clock is read, so nothing here depends on the machine's load.

The figures were recorded by the core (one tuple per probe batch: start and
end in ns relative to the first batch, thread CPU ns, tasks, voluntary and
involuntary context switches of the thread that ran it) on this 2-CPU
machine, for the four canonical workloads of benchmarks/bench_routing.py:
``np.sqrt(np.sin(a)).sum()`` on 1M floats, ~2 ms of pure-Python arithmetic,
``x + 1``, and ``time.sleep(0.002)``; first with the machine shared with
other work ("idle"), then with one busy-looping process per core beside it.
"""

import pytest

from cyjob.backends._probe import (BatchFigures, INLINE, MIN_OVERLAP_NS, PROCESSES,
                                   THREADS, decide)

pytestmark = pytest.mark.timeout(10)

IDLE = {
    "numpy": [(3464504, 101169736, 33527390, 1, 1, 11), (0, 102052566, 33023923, 1, 2, 8)],
    "gil": [(5137292, 6681205, 1541459, 1, 0, 0), (6728565, 17136452, 1744609, 1, 5, 1), (17139126, 19516065, 2356528, 1, 0, 1), (0, 2274717, 2209541, 1, 0, 2), (2361877, 4605077, 2239755, 1, 0, 0), (4658607, 11706070, 1923175, 1, 3, 2), (16127705, 21141779, 2266847, 1, 2, 4), (11788723, 13969971, 2178394, 1, 0, 0), (14047106, 16124700, 2075231, 1, 0, 0)],
    "tiny": [(0, 6950, 2513, 1, 0, 0), (46108, 49473, 1552, 2, 0, 0)],
    "sleep": [(24156, 2209576, 22904, 1, 2, 0), (2257447, 4343965, 17265, 1, 1, 0), (4409312, 6530441, 24597, 1, 2, 0), (0, 2115301, 44556, 1, 1, 2), (2175911, 4267676, 32478, 1, 1, 0), (6586875, 8714774, 25127, 1, 2, 0), (4325051, 6423998, 21152, 1, 1, 0), (8773651, 10926618, 22754, 1, 2, 0), (6497307, 8597054, 42973, 1, 1, 0), (8683032, 10778863, 36254, 1, 1, 0)],
    "numpy-2": [(3679843, 44711353, 13048151, 1, 0, 3), (0, 36888188, 12841324, 1, 0, 4)],
}

LOADED = {
    "numpy": [(2123143, 26010197, 13161610, 1, 2, 3), (26133751, 52309814, 12654738, 1, 2, 3), (0, 25163520, 12687017, 1, 0, 4), (25270880, 51884943, 13280106, 1, 0, 5)],
    "gil": [(6618817, 8316067, 1660155, 1, 0, 1), (8317710, 9923904, 1604192, 1, 0, 0), (9924325, 11525542, 1599654, 1, 0, 0), (0, 1530633, 1521939, 1, 0, 1), (1570863, 3197948, 1592634, 1, 0, 1), (3225840, 4817473, 1589871, 1, 0, 0), (4840307, 6425030, 1569951, 1, 0, 1), (6449506, 13044217, 1601660, 1, 2, 4), (18239611, 19838915, 1588869, 1, 0, 1), (19922840, 21488654, 1563982, 1, 0, 0), (21560962, 23148539, 1585864, 1, 0, 0), (13281890, 14909737, 1625583, 1, 0, 0), (14965550, 16532326, 1564944, 1, 0, 0), (16587347, 24970674, 1705494, 1, 3, 3), (23148869, 24769225, 1618883, 1, 0, 0)],
    "tiny": [(0, 6590, 1853, 1, 0, 0), (34862, 37446, 1142, 2, 0, 0)],
    "sleep": [(2120949, 4185885, 8763, 1, 1, 0), (4206095, 6278512, 15703, 1, 1, 0), (6307044, 8423496, 4286, 1, 1, 0), (0, 2078125, 31817, 1, 1, 0), (2115130, 4216500, 4117, 1, 1, 0), (8423707, 10482593, 9305, 1, 1, 0), (4236189, 6312702, 3646, 1, 1, 0), (10482954, 12558225, 10987, 1, 1, 0), (6339432, 8376877, 9174, 1, 1, 0), (8410687, 10487661, 10756, 1, 1, 0), (10641509, 12709550, 9114, 1, 1, 0)],
    "numpy-2": [(3713904, 48075027, 12755486, 1, 0, 4), (0, 48900382, 12670121, 1, 2, 3)],
}

EXPECTED = {"numpy": THREADS, "numpy-2": THREADS, "gil": PROCESSES, "tiny": INLINE,
            "sleep": THREADS}


def figures(rows):
    return [BatchFigures(*row) for row in rows]


@pytest.mark.parametrize("machine, records", [("idle", IDLE), ("loaded", LOADED)])
@pytest.mark.parametrize("workload", list(EXPECTED))
def test_recorded_probes_get_their_kind(machine, records, workload):
    """Each recorded probe gets the kind its workload needs, on both
    machines, and the verdict may be remembered."""
    verdict = decide(figures(records[workload]), n_workers=2)
    assert verdict.kind == EXPECTED[workload], verdict.reason
    assert verdict.remember
    assert "us per task" in verdict.reason


def test_the_loaded_numpy_probe_is_not_taken_for_gil_bound():
    """Issue 15's wrong choice: numpy threads on a loaded machine use ~1 CPU
    between them (efficiency ~0.5-1.0, which the old probe read as "holds the
    GIL"); they did not block, so the CPUs went to other programs."""
    verdict = decide(figures(LOADED["numpy-2"]), n_workers=2)
    assert "efficiency 0.5" in verdict.reason
    assert verdict.kind == THREADS


def test_batches_that_never_overlapped_prove_nothing():
    """Two heavy batches one after the other (the case that sent numpy to
    processes): keep measuring; at the probe's end, stay on threads and do
    not remember it."""
    ms = 1_000_000
    rows = [(0, 20 * ms, 20 * ms, 1, 0, 0), (20 * ms, 40 * ms, 20 * ms, 1, 0, 0)]
    assert decide(figures(rows), n_workers=2).kind is None
    verdict = decide(figures(rows), n_workers=2, last_chance=True)
    assert verdict.kind == THREADS and not verdict.remember
    assert "no batches ran at the same time" in verdict.reason


def test_too_little_overlap_keeps_measuring():
    ms = 1_000_000
    overlap = MIN_OVERLAP_NS // 2
    rows = [(0, 2 * overlap, overlap, 1, 3, 0), (overlap, 3 * overlap, overlap, 1, 3, 0)]
    assert decide(figures(rows), n_workers=2).kind is None
    # One more overlapping pair: enough time with two batches running.
    rows += [(3 * overlap + ms, 5 * overlap + ms, overlap, 1, 3, 0),
             (4 * overlap + ms, 6 * overlap + ms, overlap, 1, 3, 0)]
    assert decide(figures(rows), n_workers=2).kind == PROCESSES


def test_contradicting_evidence_keeps_measuring_then_stays_on_threads():
    """Threads that blocked often (GIL-like) yet wanted two CPUs (GIL-free
    like): no verdict; at the end of the probe, threads, not remembered."""
    ms = 1_000_000
    rows = [(0, 20 * ms, 10 * ms, 2, 2, 20), (0, 20 * ms, 10 * ms, 2, 2, 20)]
    assert decide(figures(rows), n_workers=2).kind is None
    verdict = decide(figures(rows), n_workers=2, last_chance=True)
    assert verdict.kind == THREADS and not verdict.remember
    assert "unclear" in verdict.reason


def test_a_preempted_tiny_batch_stays_tiny():
    """A batch of 100 ``x + 1`` that lost its CPU for 4 ms to another
    program (one involuntary switch, no voluntary one) is still tiny work."""
    rows = [(0, 4_010_000, 10_000, 100, 0, 1), (5_000_000, 5_010_000, 10_000, 100, 0, 0)]
    assert decide(figures(rows), n_workers=2).kind == INLINE


def test_small_gil_bound_tasks_run_inline():
    """Tasks that hold the GIL but use under 50 us of CPU each: pickling
    would cost as much as the work; the caller's thread runs them."""
    ms = 1_000_000
    rows = [(0, 12 * ms, 6 * ms, 200, 4, 0), (0, 12 * ms, 6 * ms, 200, 4, 0)]
    verdict = decide(figures(rows), n_workers=2)
    assert verdict.kind == INLINE and "hold the GIL and are small" in verdict.reason


def test_parallel_cpu_time_means_threads_whatever_the_switches():
    ms = 1_000_000
    rows = [(0, 20 * ms, 19 * ms, 2, 5, 0), (0, 20 * ms, 19 * ms, 2, 5, 0)]
    verdict = decide(figures(rows), n_workers=2)
    assert verdict.kind == THREADS and "efficiency 1.90" in verdict.reason


def test_one_worker_cannot_tell():
    ms = 1_000_000
    rows = [(0, 20 * ms, 20 * ms, 2, 0, 0)]
    assert decide(figures(rows), n_workers=1).kind is None
    assert decide(figures(rows), n_workers=1, last_chance=True).kind == THREADS


def test_no_batches():
    assert decide([], n_workers=2).kind is None
