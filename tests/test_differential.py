"""Differential test: random task lists run through joblib (the oracle) and
cyjob must give the same results, or fail with the same exception type."""

import joblib
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import cyjob


def add(a, b=0):
    return a + b


def mul(a, b=1, *, c=1):
    return a * b * c


def join(*parts, sep="-"):
    return sep.join(str(p) for p in parts)


def echo(*args, **kwargs):
    return (args, sorted(kwargs.items()))


def raise_value(x):
    raise ValueError(x)


def raise_key(x):
    raise KeyError(x)


def divide(a, b):
    return a // b  # ZeroDivisionError when b == 0


small_ints = st.integers(-50, 50)
words = st.text(alphabet="abcxyz", max_size=4)

TASKS = st.one_of(
    st.tuples(st.just(add), st.tuples(small_ints), st.fixed_dictionaries({}, optional={"b": small_ints})),
    st.tuples(st.just(mul), st.tuples(small_ints, small_ints),
              st.fixed_dictionaries({}, optional={"c": small_ints})),
    st.tuples(st.just(join), st.lists(st.one_of(small_ints, words), max_size=4).map(tuple),
              st.fixed_dictionaries({}, optional={"sep": words})),
    st.tuples(st.just(echo), st.lists(small_ints, max_size=3).map(tuple),
              st.dictionaries(st.sampled_from("pqr"), small_ints, max_size=2)),
    st.tuples(st.just(divide), st.tuples(small_ints, st.integers(1, 5)), st.just({})),
)
RAISING = st.sampled_from([
    (raise_value, (1,), {}),
    (raise_key, ("k",), {}),
    (divide, (1, 0), {}),
])


@st.composite
def task_lists(draw):
    tasks = draw(st.lists(TASKS, max_size=40))
    # Some tasks in list form, as joblib accepts: [f, [args], {kwargs}].
    tasks = [[f, list(a), k] if draw(st.booleans()) and draw(st.booleans()) else (f, a, k)
             for f, a, k in tasks]
    raising = draw(st.none() | RAISING)
    if raising is not None:
        tasks.insert(draw(st.integers(0, len(tasks))), raising)
    return tasks


def run(module, tasks, lazy, **params):
    """("ok", results) or ("error", exception type)."""
    source = iter(list(tasks)) if lazy else list(tasks)
    return_as = params["return_as"]
    try:
        results = list(module.Parallel(**params)(source))
    except Exception as exc:
        return ("error", type(exc))
    if return_as == "generator_unordered":
        results = sorted(results, key=repr)
    return ("ok", results)


@pytest.mark.filterwarnings("ignore:.*tasks which were still being processed:UserWarning")
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    tasks=task_lists(),
    # None: cyjob's default backend (it measures and picks), against joblib's threads.
    backend=st.sampled_from(["threading", "sequential", None]),
    n_jobs=st.sampled_from([1, 2, 3]),
    batch_size=st.sampled_from(["auto", 1, 3]),
    pre_dispatch=st.sampled_from(["2 * n_jobs", "n_jobs", "all", 1, 5]),
    return_as=st.sampled_from(["list", "generator", "generator_unordered"]),
    lazy=st.booleans(),
)
def test_cyjob_matches_joblib(tasks, backend, n_jobs, batch_size, pre_dispatch, return_as, lazy):
    params = dict(n_jobs=n_jobs, batch_size=batch_size, pre_dispatch=pre_dispatch,
                  return_as=return_as)
    expected = run(joblib, tasks, lazy, backend=backend or "threading", **params)
    if backend is not None:
        params["backend"] = backend
    actual = run(cyjob, tasks, lazy, **params)
    assert actual == expected


@pytest.mark.parametrize("backend", ["threading", "sequential"])
def test_oracle_sanity(backend):
    # The oracle itself behaves as the differential test assumes.
    tasks = [(add, (1,), {"b": 2}), [join, ["a", 1], {"sep": "+"}], (echo, (1,), {"p": 2})]
    expected = ("ok", [3, "a+1", ((1,), [("p", 2)])])
    params = dict(backend=backend, n_jobs=2, batch_size="auto", pre_dispatch="2 * n_jobs",
                  return_as="list")
    assert run(joblib, tasks, False, **params) == expected
    assert run(cyjob, tasks, False, **params) == expected
    assert run(cyjob, tasks + [(raise_key, (1,), {})], True, **params) == ("error", KeyError)
