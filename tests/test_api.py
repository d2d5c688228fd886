"""The public API on the "threading" and "sequential" backends: delayed,
Parallel's results and return_as, input forms, n_jobs, errors, time-outs and
progress messages."""

import builtins
import functools
import inspect
import multiprocessing
import pickle
import re
import threading
import time
import traceback

import cloudpickle
import pytest

from cyjob import Parallel, cpu_count, delayed
from helpers import (
    Counter,
    InputDrained,
    LazyInput,
    add,
    assert_runs_concurrently,
    assert_runs_in_caller_thread,
    ident,
    threads_started_since,
)

# The thread pool, named explicitly (the default backend measures and picks).
threads = functools.partial(Parallel, backend="threading")

BACKENDS = ["threading", "sequential"]
RETURN_AS = ["list", "generator", "generator_unordered"]
DUMPS = pytest.mark.parametrize("dumps", [pickle.dumps, cloudpickle.dumps],
                                ids=["pickle", "cloudpickle"])


def square(x):
    """Square a number."""
    return x * x


def power(x, exponent=2):
    return x ** exponent


def concat(*parts, sep="-"):
    return sep.join(map(str, parts))


def sleep_then_return(delay, value):
    time.sleep(delay)
    return value


@delayed
def decorated_add(a, b=0):
    """Add two numbers (decorated with delayed)."""
    return a + b


class TaskError(Exception):
    def __init__(self, code):
        super().__init__(code)
        self.code = code


def fail_on(x, bad=3):
    if x == bad:
        raise TaskError(x)
    return x


def count_then_fail(counter, x, failed, bad=5):
    counter()
    if x == bad:
        failed.set()
        raise TaskError(x)
    if x > bad:
        # No task after the failing one finishes before it fails, however
        # late a loaded machine runs it: until then no batch after it
        # completes, so the calls cannot grow and dispatch batches of
        # hundreds of tasks meanwhile (what ran and was pulled before the
        # failure stays a few dozen tasks, as on a quiet machine).
        failed.wait(10)
    return x


def interrupt_on(x, bad=2):
    if x == bad:
        raise KeyboardInterrupt
    return x


def block_until(event, x):
    event.wait(10)
    return x


def results_as_list(results, return_as):
    """Check the container type that return_as promises and return a list."""
    if return_as == "list":
        assert isinstance(results, list)
        return results
    assert not isinstance(results, list)
    assert iter(results) is results  # a lazy iterator, like joblib's generator
    return list(results)


# --------------------------------------------------------------------------
# delayed

def test_delayed_returns_the_plain_task_tuple():
    task = delayed(power)(3, exponent=4)
    assert type(task) is tuple
    assert task == (power, (3,), {"exponent": 4})
    assert task[0] is power
    assert delayed(ident)() == (ident, (), {})


def test_delayed_works_as_a_decorator():
    task = decorated_add(1, b=2)
    assert type(task) is tuple
    assert task[1:] == ((1,), {"b": 2})
    func, args, kwargs = task
    assert func(*args, **kwargs) == 3
    assert threads(n_jobs=2)(decorated_add(i, b=i) for i in range(10)) == [2 * i for i in range(10)]


def test_delayed_keeps_name_doc_and_wrapped():
    wrapper = delayed(square)
    assert wrapper.__name__ == "square"
    assert wrapper.__doc__ == "Square a number."
    assert wrapper.__wrapped__ is square
    assert inspect.signature(wrapper) == inspect.signature(square)
    assert decorated_add.__name__ == "decorated_add"
    assert decorated_add.__doc__ == "Add two numbers (decorated with delayed)."
    assert decorated_add.__wrapped__(2, b=5) == 7


def test_delayed_accepts_builtins_and_callable_objects():
    counter = Counter()
    assert delayed(pow)(2, 5) == (pow, (2, 5), {})
    assert threads(n_jobs=2)([delayed(pow)(2, 5), delayed(counter)(7)]) == [32, 7]
    assert counter.value == 1


@DUMPS
def test_delayed_wrapper_pickles(dumps):
    wrapper = pickle.loads(dumps(delayed(power)))
    assert wrapper(2, exponent=3) == (power, (2,), {"exponent": 3})
    assert wrapper.__name__ == "power"


@DUMPS
def test_task_tuple_pickles(dumps):
    task = delayed(power)(2, exponent=3)
    assert pickle.loads(dumps(task)) == task


@DUMPS
def test_decorated_function_pickles(dumps):
    # joblib's @delayed functions pickle by reference (functools.wraps gives
    # the wrapper the function's qualified name); cyjob's must as well.
    restored = pickle.loads(dumps(decorated_add))
    assert restored.__name__ == "decorated_add"
    func, args, kwargs = restored(1, b=2)
    assert func(*args, **kwargs) == 3


# --------------------------------------------------------------------------
# results, order and return_as

@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("return_as", ["list", "generator"])
@pytest.mark.parametrize("batch_size", ["auto", 1, 7])
def test_results_keep_input_order(backend, return_as, batch_size):
    # Later tasks finish sooner, so completion order is the reverse of input order.
    n = 30
    tasks = (delayed(sleep_then_return)((n - i) * 0.0003, i) for i in range(n))
    results = Parallel(n_jobs=2, backend=backend, return_as=return_as, batch_size=batch_size)(tasks)
    assert results_as_list(results, return_as) == list(range(n))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("return_as", RETURN_AS)
def test_many_tiny_tasks(backend, return_as):
    results = Parallel(n_jobs=2, backend=backend, return_as=return_as)(
        delayed(add)(i, b=1) for i in range(20_000))
    results = results_as_list(results, return_as)
    if return_as == "generator_unordered":
        results = sorted(results)
    assert results == list(range(1, 20_001))


def test_generator_unordered_yields_in_completion_order():
    n_fast = 6
    fast_done = Counter()
    all_fast_done = threading.Event()

    def fast(i):
        fast_done()
        if fast_done.value == n_fast:
            all_fast_done.set()
        return i

    def slow():
        all_fast_done.wait(10)
        time.sleep(0.3)  # let the last fast task's completion be recorded first
        return "slow"

    tasks = [delayed(slow)()] + [delayed(fast)(i) for i in range(n_fast)]
    # pre_dispatch="all": every task is queued at once, whoever runs `slow`.
    results = list(threads(n_jobs=2, batch_size=1, pre_dispatch="all",
                            return_as="generator_unordered")(tasks))
    assert results[-1] == "slow", results
    assert sorted(results[:-1]) == list(range(n_fast))


@pytest.mark.parametrize("backend, n_jobs", [("threading", 2), ("threading", 1), ("sequential", 2)])
@pytest.mark.parametrize("return_as", ["generator", "generator_unordered"])
def test_generator_output_does_not_drain_a_long_lazy_input(backend, n_jobs, return_as):
    # Ten million tasks; pulling more than 100k of them before the first
    # result means the input is being drained.
    source = LazyInput(ident, n=10_000_000, limit=100_000)
    try:
        results = Parallel(n_jobs=n_jobs, backend=backend, return_as=return_as)(source)
        first = next(results)
    except InputDrained as exc:
        pytest.fail(f"the lazy input was drained before the first result: {exc}")
    pulled = source.pulled
    results.close()
    assert 0 <= first < pulled
    if return_as == "generator":
        assert first == 0
    assert pulled < 1000, f"{pulled} tasks pulled before the first result"


@pytest.mark.parametrize("backend", BACKENDS)
def test_generator_pulls_input_only_pre_dispatch_ahead(backend):
    source = LazyInput(ident, n=10_000_000, limit=100_000)
    try:
        results = Parallel(n_jobs=2, backend=backend, batch_size=1, pre_dispatch="2 * n_jobs",
                           return_as="generator")(source)
        for i in range(200):
            assert next(results) == i
    except InputDrained as exc:
        pytest.fail(f"the lazy input was drained: {exc}")
    pulled = source.pulled
    results.close()
    assert pulled <= 200 + 50, f"{pulled} tasks pulled after 200 results"


def _lead(box, i):
    """How far the input had been read when task i ran."""
    return box[0] - i


@pytest.mark.parametrize("backend", BACKENDS)
def test_list_output_reads_a_lazy_input_progressively(backend):
    pulled = [0]

    def tasks():
        for i in range(2000):
            pulled[0] += 1
            yield delayed(_lead)(pulled, i)

    # Twice: the second call's function is known tiny, which must not make
    # it read further ahead with a fixed batch size (it read ~220 ahead).
    for _ in range(2):
        pulled[0] = 0
        leads = Parallel(n_jobs=2, backend=backend, batch_size=1)(tasks())
        assert len(leads) == 2000
        assert max(leads) <= 50


# --------------------------------------------------------------------------
# input forms

MIXED_TASKS = [
    [power, [2, 3], {}],
    (power, (3,), {"exponent": 3}),
    [concat, ("a", "b"), {"sep": "+"}],
    delayed(add)(1, b=2),
    delayed(concat)(1, 2, 3),
    delayed(square)(x=9),
]
MIXED_EXPECTED = [8, 27, "a+b", 3, "1-2-3", 81]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("container", [list, tuple, iter], ids=["list", "tuple", "iterator"])
@pytest.mark.parametrize("return_as", ["list", "generator"])
def test_list_form_tasks_and_a_different_function_per_task(backend, container, return_as):
    results = Parallel(n_jobs=2, backend=backend, return_as=return_as)(container(MIXED_TASKS))
    assert results_as_list(results, return_as) == MIXED_EXPECTED


@pytest.mark.parametrize("backend", BACKENDS)
def test_keyword_arguments(backend):
    results = Parallel(n_jobs=2, backend=backend)(
        delayed(power)(x, exponent=e) for x in range(5) for e in (0, 1, 3))
    assert results == [x ** e for x in range(5) for e in (0, 1, 3)]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("return_as", RETURN_AS)
@pytest.mark.parametrize("make_input", [list, tuple, iter, lambda xs: (x for x in xs)],
                         ids=["list", "tuple", "iterator", "generator"])
def test_empty_input(backend, return_as, make_input):
    results = Parallel(n_jobs=2, backend=backend, return_as=return_as)(make_input([]))
    assert results_as_list(results, return_as) == []


@pytest.mark.parametrize("backend", BACKENDS)
def test_context_manager_reuses_the_parallel_across_calls(backend):
    with Parallel(n_jobs=2, backend=backend) as parallel:
        assert isinstance(parallel, Parallel)
        assert parallel(delayed(add)(i, b=1) for i in range(100)) == list(range(1, 101))
        threads = set(threading.enumerate())
        for k in range(20):
            assert parallel(delayed(add)(i, b=k) for i in range(50)) == [i + k for i in range(50)]
            assert list(parallel(delayed(ident)(i) for i in range(5))) == list(range(5))
        assert threads_started_since(threads) == []  # no new threads per call
    # Still usable after the block, as joblib's is.
    assert parallel([delayed(square)(4)]) == [16]


def test_context_manager_with_generator_output():
    with threads(n_jobs=2, return_as="generator") as parallel:
        for k in range(5):
            results = parallel(delayed(add)(i, b=k) for i in range(100))
            assert list(results) == [i + k for i in range(100)]


# --------------------------------------------------------------------------
# n_jobs

@pytest.mark.parametrize("backend", BACKENDS)
def test_n_jobs_1_runs_in_the_caller_thread(backend):
    assert_runs_in_caller_thread(lambda: Parallel(n_jobs=1, backend=backend))


def test_n_jobs_default_is_one_worker_in_the_caller_thread():
    assert_runs_in_caller_thread(lambda: Parallel())
    assert_runs_in_caller_thread(lambda: Parallel(n_jobs=None))


def test_sequential_backend_runs_in_the_caller_thread():
    assert_runs_in_caller_thread(lambda: Parallel(n_jobs=2, backend="sequential"))


@pytest.mark.parametrize("n_jobs", [2, 3])
def test_threading_backend_runs_tasks_concurrently(n_jobs):
    assert_runs_concurrently(lambda: threads(n_jobs=n_jobs, batch_size=1), parties=n_jobs)


@pytest.mark.parametrize("n_jobs", [-100, -cpu_count()])
def test_negative_n_jobs_below_minus_cpus_means_one_worker(n_jobs):
    assert_runs_in_caller_thread(lambda: threads(n_jobs=n_jobs))


def test_n_jobs_minus_one_uses_every_cpu():
    if cpu_count() < 2:
        pytest.skip("needs at least 2 CPUs")
    parties = min(cpu_count(), 4)
    assert_runs_concurrently(lambda: threads(n_jobs=-1, batch_size=1), parties=parties)


def test_negative_n_jobs_honours_the_cpu_limit(monkeypatch):
    monkeypatch.setenv("LOKY_MAX_CPU_COUNT", "1")
    assert_runs_in_caller_thread(lambda: threads(n_jobs=-1))


# --------------------------------------------------------------------------
# errors

@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("return_as", RETURN_AS)
@pytest.mark.parametrize("lazy", [False, True], ids=["list-input", "lazy-input"])
def test_first_error_is_reraised_with_its_type_and_worker_traceback(backend, return_as, lazy):
    tasks = (delayed(fail_on)(i) for i in range(50))
    if not lazy:
        tasks = list(tasks)
    with pytest.raises(TaskError) as info:
        results_as_list(Parallel(n_jobs=2, backend=backend, return_as=return_as)(tasks), return_as)
    assert info.value.code == 3
    text = "".join(traceback.format_exception(info.type, info.value, info.tb))
    # A frame line of the task function itself, not just this file's source.
    assert re.search(r'File ".*", line \d+, in fail_on\n', text), text


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("return_as", RETURN_AS)
def test_undispatched_tasks_do_not_run_after_a_failure(backend, return_as):
    counter = Counter()
    pulled = [0]
    failed = threading.Event()

    def tasks():
        for i in range(1_000_000):
            pulled[0] += 1
            yield delayed(count_then_fail)(counter, i, failed)

    with pytest.raises(TaskError):
        results_as_list(Parallel(n_jobs=2, backend=backend, return_as=return_as)(tasks()),
                        return_as)
    time.sleep(0.2)  # anything still queued would run now
    ran = counter.value
    assert ran < 1000, f"{ran} tasks ran after the failure of task 5"
    assert pulled[0] < 1000
    time.sleep(0.2)
    assert counter.value == ran


@pytest.mark.parametrize("backend", BACKENDS)
def test_parallel_is_usable_after_a_failure(backend):
    for _ in range(3):
        with pytest.raises(TaskError):
            Parallel(n_jobs=2, backend=backend)(delayed(fail_on)(i) for i in range(100))
        assert Parallel(n_jobs=2, backend=backend)(delayed(ident)(i) for i in range(100)) == list(range(100))
    with Parallel(n_jobs=2, backend=backend) as parallel:
        with pytest.raises(TaskError):
            parallel(delayed(fail_on)(i) for i in range(10))
        assert parallel(delayed(square)(i) for i in range(10)) == [i * i for i in range(10)]
    if backend == "threading":
        assert_runs_concurrently(lambda: threads(n_jobs=2, batch_size=1))


@pytest.mark.parametrize("backend", BACKENDS)
def test_error_raised_by_the_input_iterable_propagates(backend):
    def tasks():
        yield delayed(ident)(1)
        yield delayed(ident)(2)
        raise LookupError("the input broke")

    with pytest.raises(LookupError, match="the input broke"):
        Parallel(n_jobs=2, backend=backend)(tasks())
    assert Parallel(n_jobs=2, backend=backend)(delayed(ident)(i) for i in range(10)) == list(range(10))


@pytest.mark.parametrize("backend", BACKENDS)
def test_keyboard_interrupt_raised_by_a_task_propagates(backend):
    with pytest.raises(KeyboardInterrupt):
        Parallel(n_jobs=2, backend=backend)(delayed(interrupt_on)(i) for i in range(20))
    assert Parallel(n_jobs=2, backend=backend)(delayed(ident)(i) for i in range(10)) == list(range(10))


# --------------------------------------------------------------------------
# timeout

@pytest.mark.parametrize("return_as", RETURN_AS)
def test_timeout_raises_builtin_and_multiprocessing_timeout_error(return_as):
    release = threading.Event()
    try:
        with pytest.raises(multiprocessing.TimeoutError) as info:
            results_as_list(threads(n_jobs=2, timeout=0.2, return_as=return_as)(
                delayed(block_until)(release, i) for i in range(4)), return_as)
    finally:
        release.set()
    assert isinstance(info.value, builtins.TimeoutError)
    assert threads(n_jobs=2)(delayed(ident)(i) for i in range(10)) == list(range(10))


def test_timeout_limits_tasks_not_automatic_batches():
    # joblib's timeout bounds the wait for one task; every task here takes
    # 10 ms, so automatic batching must not turn them into a wait of more
    # than 0.15 s (joblib 1.6 runs this without a TimeoutError).
    results = threads(n_jobs=2, timeout=0.15)(
        delayed(sleep_then_return)(0.01, i) for i in range(600))
    assert results == list(range(600))


def test_timeout_does_not_fire_when_results_keep_coming():
    results = threads(n_jobs=2, timeout=30)(delayed(sleep_then_return)(0.001, i) for i in range(200))
    assert results == list(range(200))


# --------------------------------------------------------------------------
# verbose

DONE_LINE = re.compile(r"^\[Parallel\(n_jobs=2\)\]: Done +(\d+)")


@pytest.mark.parametrize("backend", BACKENDS)
def test_verbose_prints_joblib_style_progress_to_stderr(capsys, backend):
    assert Parallel(n_jobs=2, backend=backend, verbose=10)(
        delayed(ident)(i) for i in range(20)) == list(range(20))
    out, err = capsys.readouterr()
    assert out == ""
    lines = err.splitlines()
    assert lines
    assert all(line.startswith("[Parallel(n_jobs=2)]: ") for line in lines), lines
    assert any(DONE_LINE.match(line) for line in lines), lines
    assert re.search(r"Done +20 out of +20 .*finished", lines[-1]), lines


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("return_as", RETURN_AS)
def test_verbose_0_prints_nothing(capfd, backend, return_as):
    results = Parallel(n_jobs=2, backend=backend, verbose=0, return_as=return_as)(
        delayed(ident)(i) for i in range(100))
    results_as_list(results, return_as)
    out, err = capfd.readouterr()
    assert out == "" and err == ""


def test_verbose_50_and_more_prints_to_stdout(capsys):
    threads(n_jobs=2, verbose=50)(delayed(ident)(i) for i in range(10))
    out, err = capsys.readouterr()
    assert err == ""
    assert "[Parallel(n_jobs=2)]: Done" in out


@pytest.mark.parametrize("n_jobs", [1, 2])
def test_sequential_progress_counts_up(capsys, n_jobs):
    # Tasks run one at a time in the caller: like joblib ("Done 1 tasks",
    # "Done 4 tasks", ...), each line reports more work done than the last.
    backend = "sequential" if n_jobs == 2 else "threading"
    Parallel(n_jobs=n_jobs, backend=backend, verbose=10, batch_size=1)(
        delayed(ident)(i) for i in range(20))
    counts = [int(m.group(1)) for m in map(re.compile(r"Done +(\d+)").search,
                                           capsys.readouterr().err.splitlines()) if m]
    assert len(counts) >= 3
    assert counts == sorted(set(counts)), counts
