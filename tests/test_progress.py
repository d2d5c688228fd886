"""progress=True: a bar on stderr, tqdm or built-in, for list and generator returns."""

import sys

import pytest

from cyjob import Parallel, delayed


def square(x):
    return x * x


@pytest.fixture(params=["tqdm", "builtin"])
def bar_kind(request, monkeypatch):
    if request.param == "tqdm":
        pytest.importorskip("tqdm")
    else:
        monkeypatch.setitem(sys.modules, "tqdm", None)  # import fails
    return request.param


@pytest.mark.parametrize("return_as", ["list", "generator", "generator_unordered"])
def test_bar_counts_every_task(bar_kind, return_as, capfd):
    out = Parallel(n_jobs=2, progress=True, return_as=return_as)(
        delayed(square)(x) for x in range(500))
    assert sorted(out) == [x * x for x in range(500)]
    err = capfd.readouterr().err
    assert "500/500" in err
    if bar_kind == "builtin":
        assert "tasks/s" in err and "ETA" in err


def test_no_bar_by_default(capfd):
    Parallel(n_jobs=2)(delayed(square)(x) for x in range(100))
    assert capfd.readouterr().err == ""


def test_progress_must_be_bool():
    with pytest.raises(TypeError, match="progress"):
        Parallel(n_jobs=2, progress="yes")


def fail_on_30(x):
    if x == 30:
        raise ValueError("task 30 failed")
    return x


@pytest.mark.parametrize("n_jobs", [1, 2])
@pytest.mark.parametrize("return_as", ["list", "generator"])
def test_bar_is_closed_when_a_task_fails(bar_kind, n_jobs, return_as, capfd):
    with pytest.raises(ValueError, match="task 30 failed"):
        list(Parallel(n_jobs=n_jobs, progress=True, return_as=return_as, batch_size=1)(
            delayed(fail_on_30)(x) for x in range(100)))
    err = capfd.readouterr().err
    # The bar ends its line: the traceback (or the next output) starts on
    # a line of its own, and tqdm does not draw it again when collected.
    assert err and err.endswith("\n"), repr(err)


def test_bar_is_closed_when_the_generator_is_closed_early(bar_kind, capfd):
    results = Parallel(n_jobs=2, progress=True, return_as="generator", batch_size=1)(
        delayed(square)(x) for x in range(100))
    assert next(results) == 0
    results.close()
    err = capfd.readouterr().err
    assert err and err.endswith("\n"), repr(err)


@pytest.mark.parametrize("return_as", ["list", "generator"])
def test_no_stderr_means_no_bar_not_a_failed_call(bar_kind, return_as, monkeypatch):
    # sys.stderr is None under pythonw and some services: the bar has
    # nowhere to go, and the results must still come back.
    monkeypatch.setattr(sys, "stderr", None)
    out = Parallel(n_jobs=2, progress=True, return_as=return_as)(
        delayed(square)(x) for x in range(50))
    assert list(out) == [x * x for x in range(50)]
