"""Bad input: every invalid parameter or task raises ValueError/TypeError that
names it, before any task runs."""

import functools

import pytest

from cyjob import Parallel, delayed
from helpers import Counter

# The thread pool, named explicitly (the default backend measures and picks).
threads = functools.partial(Parallel, backend="threading")

BACKENDS = ["threading", "sequential"]


def _bad(name, value):
    return pytest.param(name, value, id=f"{name}={value!r}")


BAD_PARAMETERS = [
    _bad("n_jobs", 0),
    # joblib converts with int(): 0.5 is 0, "2.3" is no int (1.5 and "2" are
    # accepted: tests/test_conformance.py).
    _bad("n_jobs", 0.5),
    _bad("n_jobs", "2.3"),
    _bad("n_jobs", "many"),
    _bad("n_jobs", True),
    _bad("batch_size", 0),
    _bad("batch_size", -1),
    _bad("batch_size", 1.5),
    _bad("batch_size", "big"),
    _bad("pre_dispatch", "n_jobs * __import__('os')"),
    _bad("pre_dispatch", ""),
    _bad("pre_dispatch", "3*"),
    _bad("pre_dispatch", -1),
    _bad("pre_dispatch", 0),
    _bad("pre_dispatch", 2.5),
    pytest.param("pre_dispatch", object(), id="pre_dispatch=object()"),
    _bad("return_as", "dict"),
    _bad("backend", "nope"),
    _bad("prefer", "fast"),
    _bad("prefer", 1),
    _bad("require", "shared"),
    _bad("require", True),
    _bad("verbose", "x"),
    _bad("timeout", 0),
    _bad("timeout", -1),
    _bad("timeout", "1"),
    _bad("max_nbytes", "1Q"),
    _bad("max_nbytes", "infM"),  # joblib: an OverflowError of int()
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name, value", BAD_PARAMETERS)
def test_bad_parameter_is_rejected_before_any_task_runs(backend, name, value):
    counter = Counter()
    kwargs = {"n_jobs": 2, "backend": backend, name: value}
    with pytest.raises((ValueError, TypeError)) as info:
        Parallel(**kwargs)(delayed(counter)(i) for i in range(10))
    assert name in str(info.value), f"the message does not name {name!r}: {info.value}"
    assert counter.value == 0


@pytest.mark.parametrize("expression, n_jobs", [
    ("n_jobs", 2), ("2*n_jobs", 3), ("n_jobs // 2 + 1", 2), ("3", 2), ("1.5 * n_jobs", 2),
    (1, 2), ("all", 2),
])
def test_valid_pre_dispatch_values_are_accepted(expression, n_jobs):
    results = threads(n_jobs=n_jobs, pre_dispatch=expression)(delayed(abs)(-i) for i in range(100))
    assert results == list(range(100))


def _task(name, task):
    return pytest.param(task, id=name)


class _NotCallable:
    pass


BAD_TASKS = [
    _task("int", 5),
    _task("2-tuple", (abs, (1,))),
    _task("4-tuple", (abs, (1,), {}, None)),
    _task("non-callable function", (_NotCallable(), (), {})),
    _task("non-callable int function", (3, (), {})),
    _task("args is an int", (abs, 1, {})),
    _task("kwargs is a list", (abs, (1,), [])),
    _task("kwargs is a list of pairs", (abs, (1,), [("x", 1)])),
    _task("kwargs is a string", (abs, (1,), "ab")),
    _task("string", "abc"),
    _task("None", None),
]


def _assert_rejected_before_any_task_runs(bad_task, container=list, **parallel_kwargs):
    counter = Counter()
    good = [delayed(counter)(i) for i in range(6)]
    tasks = container(good[:3] + [bad_task] + good[3:])
    with pytest.raises((TypeError, ValueError)) as info:
        list(Parallel(n_jobs=2, **parallel_kwargs)(tasks))
    assert "task" in str(info.value), info.value
    assert counter.value == 0


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("bad_task", BAD_TASKS)
def test_malformed_task_in_a_list_fails_before_any_task_runs(backend, bad_task):
    _assert_rejected_before_any_task_runs(bad_task, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("container", [list, tuple])
@pytest.mark.parametrize("return_as", ["list", "generator", "generator_unordered"])
def test_malformed_task_in_a_sequence_fails_before_any_task_runs(backend, container, return_as):
    _assert_rejected_before_any_task_runs((abs, 1, {}), container=container, backend=backend,
                                          return_as=return_as)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("bad_task", BAD_TASKS)
def test_malformed_first_task_of_a_lazy_input_fails_before_any_task_runs(backend, bad_task):
    counter = Counter()

    def tasks():
        yield bad_task
        for i in range(10):
            yield delayed(counter)(i)

    with pytest.raises((TypeError, ValueError)) as info:
        Parallel(n_jobs=2, backend=backend)(tasks())
    assert "task" in str(info.value), info.value
    assert counter.value == 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_malformed_task_in_a_lazy_input_stops_the_call(backend):
    counter = Counter()

    def tasks():
        for i in range(1_000_000):
            yield delayed(counter)(i) if i != 50 else (abs, 1, {})

    with pytest.raises(TypeError, match="task"):
        Parallel(n_jobs=2, backend=backend)(tasks())
    assert counter.value <= 50


def test_delayed_rejects_a_non_callable():
    with pytest.raises(TypeError):
        delayed(3)


@pytest.mark.parametrize("name, value", [
    ("max_batch_size", 0), ("max_batch_size", "x"), ("mmap_mode", "rw"),
    ("temp_folder", 3.5),
])
def test_other_bad_parameters(name, value):
    counter = Counter()
    with pytest.raises((ValueError, TypeError)) as info:
        threads(n_jobs=2, **{name: value})(delayed(counter)(i) for i in range(10))
    assert name in str(info.value)
    assert counter.value == 0


@pytest.mark.parametrize("good, bad", [
    (dict(n_jobs=1), dict(n_jobs=True)),         # 1 == True, yet True is no n_jobs
    (dict(timeout=1), dict(timeout=True)),
    (dict(batch_size=2), dict(batch_size=2.0)),  # 2 == 2.0
    (dict(verbose=0), dict(verbose=False)),
])
def test_checked_arguments_are_not_mistaken_for_equal_ones(good, bad):
    # Parallel() remembers the settings it checked, by its arguments: an
    # argument equal to a valid one but of another type is still checked.
    Parallel(**good)
    Parallel(**good)
    if bad == dict(verbose=False):
        assert Parallel(**bad).verbose is False  # valid, kept as given (joblib does)
        return
    with pytest.raises((TypeError, ValueError)):
        Parallel(**bad)


def test_remembered_settings_follow_parallel_config_and_registrations():
    from cyjob import parallel_config, register_parallel_backend
    from cyjob.backends.threads import ThreadingBackend

    assert Parallel(n_jobs=2)._backend.name == "auto"
    with parallel_config(backend="sequential"):
        assert Parallel(n_jobs=2)._backend.name == "sequential"

    class Marked(ThreadingBackend):
        pass

    register_parallel_backend("cyjob-test-marked", Marked)
    assert isinstance(Parallel(n_jobs=2, backend="cyjob-test-marked")._backend, Marked)
    first = Parallel(n_jobs=2, backend="threading")
    with first:
        # A Parallel made with the same arguments shares the checked settings
        # (an immutable plan), and no state of the first one (no executor).
        again = Parallel(n_jobs=2, backend="threading")
        assert vars(again) == {"_plan": first._plan}
        assert isinstance(first._plan, tuple)  # immutable
