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
    "numpy-w": [(55703, 93419609, 27648509, 1, 1, 15, 57746), (0, 118784778, 29750720, 1, 0, 10, 0)],
    "gil-w": [(10009822, 10648129, 635183, 1, 2, 0, 6231052), (10743621, 11348079, 602735, 1, 0, 0, 0), (11348669, 32104906, 907937, 1, 4, 1, 0), (0, 722713, 717124, 1, 0, 0, 0), (776193, 2146357, 1368542, 2, 0, 0, 0), (2171965, 3577231, 1403564, 2, 0, 0, 0), (3601427, 21784353, 2256299, 2, 3, 1, 0), (32113509, 33393309, 1249905, 2, 0, 1, 0), (23128799, 33931448, 1278859, 1, 2, 1, 0), (22045080, 23119255, 1067985, 1, 0, 0, 0)],
    "tiny-w": [(0, 4417, 1442, 1, 0, 0, 0), (35963, 38697, 1202, 2, 0, 0, 0)],
    "sleep-w": [(0, 4195840, 22354, 1, 3, 0, 7181112), (4218463, 8095219, 14331, 1, 1, 0, 0), (8181828, 11500585, 14312, 1, 1, 0, 0), (47661, 4096092, 14902, 1, 1, 0, 0), (4177182, 8198923, 15953, 1, 1, 0, 0), (11543138, 14106394, 11347, 1, 1, 0, 0), (14108878, 16184209, 15473, 1, 1, 0, 0), (8232894, 11356601, 11627, 1, 1, 0, 0), (11491852, 14117681, 6349, 1, 1, 0, 0), (14256016, 16330306, 10576, 1, 1, 0, 0)],
    "numpy-2": [(3679843, 44711353, 13048151, 1, 0, 3), (0, 36888188, 12841324, 1, 0, 4)],
}

LOADED = {
    "numpy": [(2123143, 26010197, 13161610, 1, 2, 3), (26133751, 52309814, 12654738, 1, 2, 3), (0, 25163520, 12687017, 1, 0, 4), (25270880, 51884943, 13280106, 1, 0, 5)],
    "gil": [(6618817, 8316067, 1660155, 1, 0, 1), (8317710, 9923904, 1604192, 1, 0, 0), (9924325, 11525542, 1599654, 1, 0, 0), (0, 1530633, 1521939, 1, 0, 1), (1570863, 3197948, 1592634, 1, 0, 1), (3225840, 4817473, 1589871, 1, 0, 0), (4840307, 6425030, 1569951, 1, 0, 1), (6449506, 13044217, 1601660, 1, 2, 4), (18239611, 19838915, 1588869, 1, 0, 1), (19922840, 21488654, 1563982, 1, 0, 0), (21560962, 23148539, 1585864, 1, 0, 0), (13281890, 14909737, 1625583, 1, 0, 0), (14965550, 16532326, 1564944, 1, 0, 0), (16587347, 24970674, 1705494, 1, 3, 3), (23148869, 24769225, 1618883, 1, 0, 0)],
    "tiny": [(0, 6590, 1853, 1, 0, 0), (34862, 37446, 1142, 2, 0, 0)],
    "sleep": [(2120949, 4185885, 8763, 1, 1, 0), (4206095, 6278512, 15703, 1, 1, 0), (6307044, 8423496, 4286, 1, 1, 0), (0, 2078125, 31817, 1, 1, 0), (2115130, 4216500, 4117, 1, 1, 0), (8423707, 10482593, 9305, 1, 1, 0), (4236189, 6312702, 3646, 1, 1, 0), (10482954, 12558225, 10987, 1, 1, 0), (6339432, 8376877, 9174, 1, 1, 0), (8410687, 10487661, 10756, 1, 1, 0), (10641509, 12709550, 9114, 1, 1, 0)],
    "tiny-w": [(0, 3685, 1733, 1, 0, 0, 0), (22864, 25297, 1042, 2, 0, 0, 0)],
    "sleep-w": [(41762, 2102291, 28342, 1, 3, 0, 1298488), (2181549, 4273274, 20881, 1, 1, 0, 0), (4336368, 6425800, 27331, 1, 1, 0, 0), (0, 2189000, 32149, 1, 1, 2, 0), (6469245, 8648620, 9414, 1, 1, 0, 0), (2212144, 4353704, 6219, 1, 1, 0, 0), (8732485, 10840525, 7500, 1, 1, 0, 0), (4386072, 6475855, 4577, 1, 1, 0, 0), (6512639, 8559378, 18687, 1, 1, 0, 0), (8636352, 10714748, 19029, 1, 1, 0, 0)],
    "gil-overloaded": [(5469761, 5715045, 241478, 1, 3, 0, 17553401), (5830737, 6054720, 221569, 1, 0, 0, 0), (6096992, 6300134, 201059, 1, 0, 0, 0), (0, 226697, 218685, 1, 0, 0, 0), (313255, 28451001, 601365, 2, 4, 1, 0), (6364289, 15958794, 734591, 4, 0, 1, 0), (15974417, 27940573, 1733013, 8, 0, 1, 0), (27955185, 56297585, 2051020, 9, 3, 1, 0), (33541459, 33668107, 125296, 1, 0, 0, 0), (33413068, 33540728, 126207, 1, 0, 0, 0), (28828492, 29025594, 193958, 1, 0, 0, 0), (29136689, 29336566, 197683, 1, 0, 0, 0), (29461441, 32629175, 243647, 1, 0, 2, 0), (32843983, 33065442, 219055, 1, 0, 0, 0), (33214423, 33410915, 193267, 1, 0, 0, 0), (107959116, 108450946, 486142, 2, 2, 0, 32022954), (108461041, 109071067, 606520, 3, 0, 0, 0), (109074242, 109774301, 694781, 3, 0, 0, 0), (73067192, 76226593, 653656, 3, 0, 1, 0), (76598095, 103449817, 845195, 4, 0, 1, 0), (134001256, 134762116, 756674, 6, 3, 0, 17563316), (135158314, 140021865, 855499, 6, 0, 1, 0), (140581976, 151924837, 1331987, 6, 0, 1, 0), (117549681, 118753358, 1198109, 6, 0, 0, 0)],
    "numpy-2": [(3713904, 48075027, 12755486, 1, 0, 4), (0, 48900382, 12670121, 1, 2, 3)],
}

def expected(workload):
    return {"numpy": THREADS, "gil": PROCESSES, "tiny": INLINE,
            "sleep": THREADS}[workload.split("-")[0]]


def figures(rows):
    return [BatchFigures(*row) for row in rows]


RECORDS = [("idle", name, rows) for name, rows in IDLE.items()] + [
    ("loaded", name, rows) for name, rows in LOADED.items()]


@pytest.mark.parametrize("machine, workload, rows", RECORDS,
                         ids=[f"{m}-{w}" for m, w, _ in RECORDS])
def test_recorded_probes_get_their_kind(machine, workload, rows):
    """Each recorded probe gets the kind its workload needs, on both
    machines, and the verdict may be remembered."""
    verdict = decide(figures(rows), n_workers=2)
    assert verdict.kind == expected(workload), verdict.reason
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
    rows = [(0, 20 * ms, 10 * ms, 2, 8, 20), (0, 20 * ms, 10 * ms, 2, 8, 20)]
    assert decide(figures(rows), n_workers=2).kind is None
    verdict = decide(figures(rows), n_workers=2, last_chance=True)
    assert verdict.kind == THREADS and not verdict.remember
    assert "unclear" in verdict.reason


# The first task of a process's first call, run alone on the one thread
# started for it (AutoExecutor._first_task), idle machine.
FIRST_TASK = {
    "tiny": [(0, 5328, 2574, 1, 1, 0, 47140)],
    "tiny-2": [(0, 4607, 2194, 1, 0, 0, 2333)],
    "gil": [(0, 895750, 891624, 1, 0, 0, 2013)],
}


def test_a_first_task_alone_decides_only_tiny_work():
    """One task measured on the one thread a process's first call starts:
    tiny work goes inline at once (no other thread needed); anything else
    needs batches that ran side by side: keep measuring."""
    for rows in (FIRST_TASK["tiny"], FIRST_TASK["tiny-2"]):
        verdict = decide(figures(rows), n_workers=1)
        assert verdict.kind == INLINE and verdict.remember, verdict
    assert decide(figures(FIRST_TASK["gil"]), n_workers=1).kind is None
    # Two workers: one tiny batch is not yet each worker's first.
    assert decide(figures(FIRST_TASK["tiny"]), n_workers=2).kind is None


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


def test_a_single_slow_batch_is_not_enough():
    """Recorded on an overloaded machine: one numpy batch of one task took
    170 ms (26 ms of CPU) and nothing ran beside it: keep measuring; at the
    probe's end, threads, not remembered."""
    rows = [(0, 169803215, 26412623, 1, 0, 8, 2684)]
    assert decide(figures(rows), n_workers=2).kind is None
    verdict = decide(figures(rows), n_workers=2, last_chance=True)
    assert (verdict.kind, verdict.remember) == (THREADS, False)


def test_a_workers_wait_for_the_gil_counts_as_overlap():
    """The caller runs a 5 ms GIL-bound batch; the worker that took the
    next batch waited 5 ms for the GIL (four voluntary switches) before it
    could start: that wait is the overlap that shows GIL contention."""
    ms = 1_000_000
    rows = [(0, 5 * ms, 5 * ms, 1, 0, 0, 0), (5 * ms, 10 * ms, 5 * ms, 1, 4, 0, 5 * ms),
            (10 * ms, 15 * ms, 5 * ms, 1, 0, 0, 0), (15 * ms, 20 * ms, 5 * ms, 1, 4, 0, 5 * ms)]
    verdict = decide(figures(rows), n_workers=2)
    assert verdict.kind == PROCESSES, verdict.reason
    no_wait = [row[:6] for row in rows]
    assert decide(figures(no_wait), n_workers=2).kind is None


def test_sleeping_threads_woken_on_a_loaded_machine_still_wait():
    """Recorded: time.sleep(0.002) tasks on an overloaded machine, where
    each wake-up was followed by preemptions (2 involuntary switches for 1
    voluntary): their off-CPU time, split by switch counts, makes them look
    CPU-hungry (demand 0.40), but ~500 waits per 10 ms of CPU is no GIL."""
    rows = [(2570233436581, 2570240111792, 59488, 1, 3, 0, 23504),
            (2570240246672, 2570242485086, 14211, 1, 1, 0, 0),
            (2570242526337, 2570244969695, 20460, 1, 1, 0, 0),
            (2570233424854, 2570240269787, 25287, 1, 1, 2, 0),
            (2570240315094, 2570242362514, 34853, 1, 1, 0, 0),
            (2570242471135, 2570245111185, 12718, 1, 1, 0, 0)]
    verdict = decide(figures(rows), n_workers=2)
    assert verdict.kind == THREADS and "mostly wait" in verdict.reason, verdict.reason


# Probes of the gil workload, 2 ms tasks (the 7th figure: the worker's wait
# for the GIL before the batch).  With batches of one task (the sizer's 2 ms
# minimum), shorter than the GIL switch interval (5 ms), one worker ran batch
# after batch while the other waited for the GIL unseen: a worker that
# releases the GIL between batches and takes it back at once counts as a
# switch, so the waiting one never asks for a hand-over.  This probe needed
# 96 ms, 41 batches:
GIL_SHORT_BATCHES = [
    (27842, 1941713, 1876326, 1, 2, 1, 27842), (1963656, 3798430, 1827704, 1, 3, 1, 1942865),
    (3898028, 5786141, 1858319, 1, 2, 1, 103354), (5803787, 7636668, 1827212, 1, 2, 1, 20681),
    (7733432, 9619152, 1875224, 1, 1, 2, 99908), (9637108, 11500054, 1856676, 1, 2, 1, 21371),
    (11573604, 13526253, 1922564, 1, 2, 1, 76634),
    (13543679, 15482777, 1890096, 1, 2, 2, 20661),
    (15588535, 17488806, 1894002, 1, 1, 1, 109313),
    (17506803, 19384771, 1872109, 1, 2, 1, 21282),
    (19507663, 21434975, 1896545, 1, 2, 1, 126237),
    (21452020, 23355947, 1895184, 1, 2, 1, 20340),
    (23495844, 25401824, 1899449, 1, 1, 1, 144424),
    (25419130, 27305561, 1880772, 1, 2, 1, 20611),
    (27443786, 29371147, 1897897, 1, 2, 1, 141410),
    (29389004, 31279761, 1884557, 1, 2, 1, 21061),
    (31485066, 33458486, 1934602, 1, 1, 2, 208409),
    (33472427, 35363454, 1881433, 1, 2, 1, 17667),
    (35371536, 37274411, 1898338, 1, 2, 1, 15162),
    (37525935, 39423372, 1891508, 1, 1, 1, 697836),
    (39441078, 41359627, 1912119, 1, 2, 1, 21041),
    (41646252, 43567605, 1890527, 1, 2, 1, 290371),
    (43584940, 45517780, 1926270, 1, 2, 1, 20850),
    (45827390, 47723916, 1889706, 1, 1, 1, 313145),
    (47741772, 49705127, 1933631, 1, 2, 1, 21382),
    (50184759, 52157067, 1942815, 1, 2, 1, 775161),
    (52175024, 54099441, 1917537, 1, 3, 1, 1997285),
    (54492244, 56391184, 1892039, 1, 1, 1, 396478),
    (56408980, 58341239, 1925458, 1, 2, 1, 21031),
    (58765439, 60685269, 1889656, 1, 2, 1, 427695),
    (60702264, 62658929, 1950165, 1, 2, 1, 20770),
    (63145051, 65069388, 1912900, 1, 1, 1, 489567),
    (65087325, 67010871, 1917066, 1, 2, 1, 247167),
    (67549210, 69509230, 1930296, 1, 2, 1, 541684),
    (69528008, 71440698, 1905649, 1, 3, 1, 1985378),
    (72060878, 75892467, 3823026, 2, 1, 1, 623816),
    (75910935, 79738948, 3819590, 2, 2, 1, 23195),
    (80384206, 84262344, 3822345, 2, 2, 1, 649755),
    (84283485, 88090127, 3798389, 2, 3, 1, 3906109),
    (88802695, 92675425, 3842865, 2, 2, 1, 716935),
    (92693361, 96520073, 3819160, 2, 3, 1, 3897216),
]
# The same workload with probe batches of at least two switch intervals
# (auto.PROBE_SWITCH_INTERVALS), on the shared machine and with one busy loop
# per CPU beside it: the workers take turns inside their batches.
GIL_PROBE_BATCHES = {
    "idle": [
        (1890958, 3682017, 1781835, 1, 3, 1, 1890958),
        (40280, 1875114, 1817588, 1, 0, 1, 821), (3690590, 5525584, 1827484, 1, 2, 1, 14512),
        (5660194, 7465735, 1798770, 1, 1, 1, 138386),
        (7483471, 11098338, 3609789, 2, 2, 1, 21622),
        (11203644, 26583789, 7356221, 4, 5, 5, 2123623),
        (18188815, 35457333, 9143947, 5, 5, 4, 5078139),
    ],
    "loaded": [
        (3085, 487494, 481605, 1, 0, 0, 3085), (501004, 976390, 473994, 1, 0, 0, 501),
        (977111, 1462992, 479562, 1, 0, 1, 441), (1583822, 2067940, 482907, 1, 0, 0, 581),
        (2150062, 3143447, 992043, 2, 0, 0, 540), (3231468, 5210907, 1977736, 4, 0, 0, 551),
        (5310955, 9249443, 3936554, 8, 0, 0, 671),
        (19815480, 52088596, 6335647, 16, 6, 1, 12235987),
        (9281510, 44441512, 9974817, 20, 5, 1, 771),
    ],
}


def _span_ms(rows):
    return (max(row[1] for row in rows) - min(row[0] - row[6] for row in rows)) / 1e6


def test_gil_bound_batches_shorter_than_the_switch_interval_show_little_overlap():
    """The recorded short-batch probe: after 60 ms of GIL-bound batches of
    one task, still no verdict (they ran one after another)."""
    first = [row for row in GIL_SHORT_BATCHES if row[1] <= 60_000_000]
    assert len(first) >= 25
    assert decide(figures(first), n_workers=2).kind is None
    assert decide(figures(GIL_SHORT_BATCHES), n_workers=2).kind == PROCESSES


@pytest.mark.parametrize("machine", sorted(GIL_PROBE_BATCHES))
def test_gil_bound_batches_longer_than_the_switch_interval_decide_early(machine):
    """Probe batches of two switch intervals overlap: the verdict comes from
    the first 7-9 batches, within ~35-52 ms of the first batch's start."""
    rows = GIL_PROBE_BATCHES[machine]
    assert len(rows) <= 10 and _span_ms(rows) < 60
    verdict = decide(figures(rows), n_workers=2)
    assert verdict.kind == PROCESSES and verdict.remember, verdict.reason
