"""The auto batch-size heuristic, driven by synthetic durations (no clock)."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from batching_model import PyBatchSizer, simulate
from cyjob._batching import BatchSizer

US = 1e3
MS = 1e6
N_WORKERS = 2
# Dispatch cost charged to every simulated batch (measured ~5-10 us here).
OVERHEAD_NS = 10 * US


def bound(durations):
    return max(sum(durations) / N_WORKERS, max(durations))


def run(durations, lazy, sizer_cls=BatchSizer, **kwargs):
    sizer = sizer_cls(N_WORKERS, **kwargs)
    makespan, sizes = simulate(durations, N_WORKERS, sizer, lazy=lazy,
                               overhead_ns=OVERHEAD_NS)
    return makespan / bound(durations), sizes


WORKLOADS = {
    "uniform tiny": [200.0] * 200_000,
    "uniform heavy": [20 * MS] * 100,
    "heavy tail": [20 * MS if i % 100 == 99 else 0.2 * MS for i in range(2000)],
    "fast then slow": [10 * US] * 20_000 + [20 * MS] * 40,
    "slow then fast": [20 * MS] * 40 + [10 * US] * 20_000,
}
# Makespan / bound allowed in the simulation (real runs add noise on top).
LIMITS = {
    "uniform tiny": 1.10,
    "uniform heavy": 1.05,
    "heavy tail": 1.08,
    "fast then slow": 1.10,
    "slow then fast": 1.10,
}


@pytest.mark.parametrize("lazy", [False, True], ids=["sequence", "generator"])
@pytest.mark.parametrize("name", list(WORKLOADS))
def test_makespan_close_to_bound(name, lazy):
    ratio, sizes = run(WORKLOADS[name], lazy)
    assert ratio <= LIMITS[name], (ratio, len(sizes), sizes[:40], sizes[-40:])


def test_tiny_tasks_use_few_large_batches():
    _, sizes = run(WORKLOADS["uniform tiny"], lazy=True)
    assert len(sizes) < 200          # ~5-10 us per batch: under 1% overhead
    assert max(sizes) >= 5_000       # near the 10,000 cap


def test_first_batches_are_single_tasks():
    _, sizes = run(WORKLOADS["uniform heavy"], lazy=False)
    assert sizes[:2 * N_WORKERS] == [1] * (2 * N_WORKERS)


def test_batches_shrink_at_the_end_of_a_known_input():
    _, sizes = run([1 * MS] * 5000, lazy=False)
    tail = sizes[-10:]
    assert tail == sorted(tail, reverse=True)
    assert tail[-1] == 1


def test_batch_never_exceeds_user_cap():
    _, sizes = run(WORKLOADS["uniform tiny"], lazy=True, max_size=64)
    assert max(sizes) == 64


def test_growth_at_most_doubles():
    sizer = BatchSizer(N_WORKERS)
    previous = sizer.next_size(-1)
    for _ in range(30):
        sizer.observe(previous, previous * 10.0)  # 10 ns tasks: wants huge batches
        size = sizer.next_size(-1)
        assert size <= 2 * previous
        previous = size


def test_fixed_size_is_honoured():
    sizer = BatchSizer(N_WORKERS, fixed_size=7)
    sizer.observe(7, 1e9)
    assert sizer.next_size(-1) == 7
    assert sizer.next_size(3) == 3
    assert sizer.next_size(0) == 0


def _steady(sizer, task_ns, n_batches=40):
    size = sizer.next_size(-1)
    for _ in range(n_batches):
        sizer.observe(size, size * task_ns)
        size = sizer.next_size(-1)
    return size


def test_one_slow_task_in_a_batch_barely_moves_the_size():
    sizer = BatchSizer(N_WORKERS)
    steady = _steady(sizer, 100 * US)
    assert steady >= 50
    sizer.observe(steady, (steady - 1) * 100 * US + 100 * 100 * US)  # one task 100x
    assert sizer.next_size(-1) >= steady / 3


def test_recovers_quickly_after_an_outlier_batch():
    sizer = BatchSizer(N_WORKERS)
    steady = _steady(sizer, 100 * US)
    sizer.observe(steady, steady * 100 * 100 * US)  # a whole batch 100x slower
    shrunk = sizer.next_size(-1)
    assert shrunk < steady / 4  # a possible phase change: be careful
    size = shrunk
    for _ in range(6):
        sizer.observe(size, size * 100 * US)
        size = sizer.next_size(-1)
    assert size >= steady


def test_invalid_parameters():
    with pytest.raises(ValueError, match="n_workers"):
        BatchSizer(0)
    with pytest.raises(ValueError, match="max_batch_size"):
        BatchSizer(2, max_size=0)


operations = st.lists(
    st.one_of(
        st.tuples(st.just("observe"), st.integers(1, 5000), st.floats(1.0, 1e10)),
        st.tuples(st.just("next"), st.integers(-1, 100_000)),
    ),
    max_size=60,
)


@settings(max_examples=200, deadline=None)
@given(ops=operations, n_workers=st.integers(1, 8), max_size=st.integers(1, 20_000))
def test_compiled_sizer_matches_python_twin(ops, n_workers, max_size):
    compiled, twin = BatchSizer(n_workers, max_size=max_size), PyBatchSizer(n_workers, max_size=max_size)
    for op in ops:
        if op[0] == "observe":
            compiled.observe(op[1], op[2])
            twin.observe(op[1], op[2])
        else:
            assert compiled.next_size(op[1]) == twin.next_size(op[1])
    assert compiled.ns_per_task == pytest.approx(twin.ns_per_task)


def test_expected_cost_sizes_the_first_batch():
    # A cost remembered from an earlier call replaces the batches of one:
    # 10 ms minimum batches of 2 ms tasks hold 5 tasks from the start.
    s = BatchSizer(2, max_size=1000, min_batch_seconds=0.010)
    s.expect(2e6)
    assert s.next_size(-1) == 5
    s.observe(5, 5 * 4e6)  # then measurements take over
    assert s.ns_per_task > 2e6


def test_expect_does_not_override_measurements():
    s = BatchSizer(2)
    s.observe(1, 1e3)
    s.expect(1e9)
    assert s.ns_per_task == 1e3


def test_continued_sizer_keeps_what_was_measured():
    # Moving a call to processes keeps the measured cost and work: the first
    # batch there is sized for the new minimum batch, not restarted at one.
    s = BatchSizer(2, max_size=1000, min_batch_seconds=0.002)
    for _ in range(4):
        s.observe(1, 2e6)
    moved = s.continued(0.010)
    assert (moved.ns_per_task, moved.work_ns, moved.n_tasks) == (s.ns_per_task, s.work_ns, 4)
    assert moved.min_batch_ns == 10e6
    assert moved.next_size(-1) == 5
    assert s.next_size(-1) == 1  # the original keeps its own minimum


def test_work_left_under_50_us_is_not_split_between_workers():
    # 10 tasks of 1 us: one batch (a second worker's wake-up and the GIL
    # passing between threads would cost more than the 5 us it could save).
    s = BatchSizer(2)
    s.expect(1e3)
    assert s.next_size(10) == 10
    # 10 tasks of 10 us (100 us in all) are balanced as before.
    s = BatchSizer(2)
    s.expect(10e3)
    assert s.next_size(10) == 3  # ceil(10 / (BALANCE * 2 workers))


def test_small_call_size_is_what_fits_in_50_us():
    s = BatchSizer(2)
    assert s.small_call_size(1e3) == 50
    assert s.small_call_size(60e3) == 0  # one such task is no small call
    assert s.small_call_size(-1.0) == 0  # unknown cost
    assert s.small_call_size(0.0) == 0
