"""cyjob.Memory: joblib's API and behaviour (both run where possible), and
what joblib lacks: invalidation by helpers, single-flight across threads and
processes, crash safety, a size bound, a read-only or full store."""

import asyncio
import functools
import os
import pickle
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
import warnings

import numpy as np
import pytest

import cyjob
from cyjob import Memory, MemorizedResult, Parallel, delayed, expires_after
from helpers import child_env

joblib = pytest.importorskip("joblib")


def _entries(location):
    out = []
    for root, _, files in os.walk(location):
        out += [os.path.join(root, f) for f in files
                if not f.endswith((".json", ".lock", ".tmp")) and not f.startswith(".")]
    return sorted(out)


# -- the same scenarios on joblib.Memory and cyjob.Memory ---------------------

class Box:
    def __init__(self, k):
        self.k = k

    def scale(self, x):
        return self.k * x

    @staticmethod
    def stat(x):
        return x + 100

    @classmethod
    def klass(cls, x):
        return (cls.__name__, x)


def plain(a, b=2, *args, c=3, **kw):
    return (a, b, args, c, sorted(kw.items()))


def _scenario(memory_cls, location):
    """Run one script of calls; return (results, number of computations)."""
    calls = []

    def counted(f):
        @functools.wraps(f)
        def wrapper(*a, **k):
            calls.append(f.__name__)
            return f(*a, **k)
        return wrapper

    mem = memory_cls(location, verbose=0)
    results = []

    f = mem.cache(counted(lambda a, b=2: a + b))
    results += [f(1), f(1, 2), f(1, b=2), f(a=1), f(2)]

    g = mem.cache(ignore=["debug"])(counted(lambda x, debug=False: x * 2))
    results += [g(3), g(3, debug=True), g(3, True), g(4)]

    box = Box(3)
    m = mem.cache(box.scale)
    results += [m(2), m(2), mem.cache(Box.stat)(1), mem.cache(Box.stat)(1)]
    results += [mem.cache(Box.klass)(5), mem.cache(Box.klass)(5)]

    p = mem.cache(functools.partial(counted(lambda a, b: a - b), 10))
    results += [p(1), p(1), p(b=2)]

    base = 7

    def closure(x):
        calls.append("closure")
        return x + base
    c = mem.cache(closure)
    results += [c(1), c(1)]

    v = mem.cache(counted(plain))
    results += [v(1), v(1, 2), v(1, 2, 3, 4), v(1, 2, 3, 4), v(1, c=3), v(1, z=1), v(1, z=1)]

    results += [f.check_call_in_cache(1), f.check_call_in_cache(99)]
    out, meta = f.call(1)
    results += [out, sorted(meta)]
    f.clear(warn=False)
    results += [f.check_call_in_cache(1), f(1)]
    results += [mem.eval(counted(lambda: 42)), mem.eval(Box.stat, 0)]
    return results, len(calls)


def test_same_results_and_computations_as_joblib(tmp_path):
    ours = _scenario(Memory, tmp_path / "cy")
    theirs = _scenario(joblib.Memory, str(tmp_path / "jl"))
    assert ours == theirs


class Counted:
    def __init__(self, k, calls):
        self.k = k
        self.calls = calls

    def scale(self, x, verbose=0):
        self.calls.append(x)
        return 10 * x


@pytest.mark.parametrize("memory_cls", [Memory, joblib.Memory])
def test_bound_method_with_ignore_self(tmp_path, memory_cls):
    # joblib's pattern for methods, memory.cache(self.method, ignore=['self']):
    # the instance is left out of the key, so two instances share entries.
    mem = memory_cls(str(tmp_path), verbose=0)
    calls = []
    first = mem.cache(Counted(1, calls).scale, ignore=["self", "verbose"])
    second = mem.cache(Counted(2, calls).scale, ignore=["verbose", "self"])
    assert first(3) == 30 and first(3, verbose=1) == 30 and second(3) == 30
    assert calls == [3]
    assert second.check_call_in_cache(3)
    with pytest.raises(ValueError, match="Ignore list"):
        mem.cache(Counted(1, calls).scale, ignore=["this"])(3)


def test_ignore_names_an_argument_a_partial_binds(tmp_path):
    # joblib accepts ignore=["x"] for functools.partial(g, 1) (x bound by the
    # partial): the bound value then stays out of the key, as an ignored
    # argument's does.
    calls = []

    def add(x, y, z=0):
        calls.append((x, y, z))
        return x + y + z

    mem = Memory(tmp_path, verbose=0)
    f = mem.cache(functools.partial(add, 1), ignore=["x"])
    assert f(2) == 3 and f(2) == 3 and calls == [(1, 2, 0)]
    assert mem.cache(functools.partial(add, 5), ignore=["x"])(2) == 3  # x is ignored
    g = mem.cache(functools.partial(add, 1, z=4), ignore=["z"])
    assert g(2) == 7 and g(2, z=4) == 7 and len(calls) == 2
    assert mem.cache(functools.partial(add, 1), ignore=["y"])(2) == 3  # y: a call argument
    assert mem.cache(functools.partial(add, 1), ignore=["y"])(3) == 3
    with pytest.raises(ValueError, match="Ignore list"):
        mem.cache(functools.partial(add, 1), ignore=["w"])(2)


def test_unpicklable_argument_is_a_pickling_error_naming_the_function(tmp_path):
    # As cyjob.hash says of the same object: a PicklingError that says what
    # could not be hashed (not pickle's bare TypeError), raised before the
    # function runs.
    calls = []

    def takes_lock(lock):
        calls.append(lock)

    mem = Memory(tmp_path, verbose=0)
    f = mem.cache(takes_lock)
    for method in (f, f.call_and_shelve, f.check_call_in_cache, f.call):
        with pytest.raises(pickle.PicklingError,
                           match=r"arguments of \S*takes_lock could not be hashed") as info:
            method(threading.Lock())
        assert "_thread.lock" in str(info.value)
    assert calls == []


class Multiplier:
    def __init__(self, k):
        self.k = k

    def __call__(self, x):
        return self.k * x


def test_state_of_callable_objects_and_partial_methods_is_in_the_key(tmp_path):
    # The object a call runs on is an argument: Multiplier(3) must not be
    # served Multiplier(2)'s entry (their function id names only the class;
    # joblib 1.6 serves it).
    mem = Memory(tmp_path, verbose=0)
    assert mem.cache(Multiplier(2))(3) == 6
    assert mem.cache(Multiplier(3))(3) == 9
    assert mem.cache(functools.partial(Multiplier(4), 3))() == 12
    assert mem.cache(functools.partial(Multiplier(5), 3))() == 15
    assert mem.cache(functools.partial(Box(6).scale, 3))() == 18
    assert mem.cache(functools.partial(Box(7).scale, 3))() == 21


def test_callable_object_hits_its_own_entries(tmp_path):
    mem = Memory(tmp_path, verbose=0)
    f = mem.cache(Multiplier(2))
    assert f(3) == 6 and f.check_call_in_cache(3)
    assert mem.cache(Multiplier(2)).check_call_in_cache(3)  # equal state: a hit
    assert not mem.cache(Multiplier(3)).check_call_in_cache(3)


class _NoEquality:
    def __eq__(self, other):
        raise RuntimeError("compared")

    __hash__ = object.__hash__


def test_defaults_that_do_not_compare_as_bools(tmp_path):
    # A numpy array default (== gives an array, whose truth is ambiguous) or
    # one whose == raises: joblib caches such functions; the key was built by
    # testing `empty in defaults`, which compares each default.
    calls = []

    def with_array(x, weights=np.arange(3)):
        calls.append(x)
        return x * weights.sum()

    def with_object(x, option=_NoEquality()):
        calls.append(x)
        return x

    mem = Memory(tmp_path, verbose=0)
    f, g = mem.cache(with_array), mem.cache(with_object)
    assert f(2) == 6 and f(2) == 6 and f(2, np.arange(3)) == 6
    assert g(1) == 1 and g(1) == 1
    assert calls == [2, 1]


def test_location_none_calls_through():
    for mem in (Memory(None), Memory()):
        n = []
        f = mem.cache(lambda x: n.append(x) or x)
        assert f(1) == 1 and f(1) == 1 and n == [1, 1]
        assert f.check_call_in_cache(1) is False
        r = f.call_and_shelve(5)
        assert r.get() == 5
        r.clear()
        with pytest.raises(KeyError):
            r.get()
        assert f.call(3) == (3, {})
        assert mem.eval(pow, 2, 3) == 8
        mem.clear(warn=False)
        mem.reduce_size("1M")


def test_location_pathlike_and_str(tmp_path):
    for loc in (tmp_path / "a", str(tmp_path / "b")):
        mem = Memory(loc, verbose=0)
        assert mem.cache(abs)(-3) == 3
        assert mem.location == loc
        assert _entries(os.fspath(loc))


def test_bad_arguments_are_refused(tmp_path):
    with pytest.raises(ValueError, match="mmap_mode"):
        Memory(tmp_path, mmap_mode="x")
    with pytest.raises(ValueError, match="size"):
        Memory(tmp_path, bytes_limit="12Q")
    with pytest.raises(TypeError, match="location"):
        Memory(12)
    with pytest.raises(ValueError, match="compress"):
        Memory(tmp_path, compress=("snappy", 3))
    mem = Memory(tmp_path, verbose=0)
    with pytest.raises(ValueError, match="cache_validation_callback"):
        mem.cache(abs, cache_validation_callback=3)
    with pytest.raises(ValueError, match="Ignore list"):
        mem.cache(lambda x: x, ignore=["y"])
    with pytest.raises(TypeError):
        mem.cache(lambda x: x)(1, 2)
    with pytest.raises(TypeError, match="verbose"):
        mem.cache(abs, verbose="2")
    with pytest.raises(TypeError, match="verbose"):
        mem.cache(verbose=1.5)
    with pytest.raises(TypeError, match="verbose"):
        Memory(None).cache(abs, verbose="2")
    for memory in (mem, Memory(None)):
        with pytest.raises(TypeError, match="callable"):
            memory.cache(5)
        with pytest.raises(TypeError, match="callable"):
            memory.cache(ignore=[])("not a function")
    assert not os.path.exists(tmp_path / "cyjob" / "builtins")
    for options in ([("compress", 3)], "compress", 3):
        with pytest.raises(TypeError, match="backend_options"):
            Memory(tmp_path, backend_options=options)


@pytest.mark.parametrize("limit", ["-1G", "-0.5K", "infG", "-infM"])
def test_bad_bytes_limit_strings_are_refused_up_front(tmp_path, limit):
    # A negative or infinite size is refused when the Memory is made (a
    # ValueError naming the parameter), as -1 is: not an OverflowError, nor a
    # warning at every write that the result could not be stored.
    with pytest.raises(ValueError, match="bytes_limit|size"):
        Memory(tmp_path, verbose=0, bytes_limit=limit)
    mem = Memory(tmp_path, verbose=0)
    with pytest.raises(ValueError, match="bytes_limit|size"):
        mem.reduce_size(bytes_limit=limit)


def test_call_and_shelve_pickles_to_another_process(tmp_path):
    mem = Memory(tmp_path, verbose=0)
    f = mem.cache(Box.stat)
    ref = f.call_and_shelve(5)
    assert isinstance(ref, MemorizedResult)
    assert ref.get() == 105
    code = ("import pickle, sys; r = pickle.loads(sys.stdin.buffer.read()); "
            "print(r.get())")
    out = subprocess.run([sys.executable, "-c", code], input=pickle.dumps(ref),
                         capture_output=True, timeout=60, env=child_env())
    assert out.stdout.strip() == b"105", out.stderr
    ref.clear()
    with pytest.raises(KeyError):
        ref.get()
    assert "args_id" in repr(ref)


def test_get_of_a_cleared_result_says_it_may_have_been_cleared(tmp_path):
    # joblib: "Non-existing item (may have been cleared)"; a missing entry is
    # not a corrupted folder.
    ref = Memory(tmp_path, verbose=0).cache(Box.stat).call_and_shelve(6)
    ref.clear()
    with pytest.raises(KeyError, match=r"Non-existing item \(may have been cleared\)") as info:
        ref.get()
    assert "corrupted" not in str(info.value)


def test_async_functions(tmp_path):
    calls = []

    async def coro(x, y=1):
        calls.append(x)
        await asyncio.sleep(0)
        return x * y

    mem = Memory(tmp_path, verbose=0)
    f = mem.cache(coro)

    async def main():
        a = await f(3, 2)
        b = await f(3, y=2)
        ref = await f.call_and_shelve(4)
        out, meta = await f.call(3, 2)
        return a, b, ref.get(), out

    assert asyncio.run(main()) == (6, 6, 4, 6)
    assert calls == [3, 4, 3]
    nf = Memory(None).cache(coro)

    async def main2():
        return (await nf(2)), (await nf.call_and_shelve(2)).get()
    assert asyncio.run(main2()) == (2, 2)


def test_verbose_lines(tmp_path, capsys):
    mem = Memory(tmp_path, verbose=1)
    f = mem.cache(Box.stat)
    f(1)
    out = capsys.readouterr().out
    assert "[Memory] Calling" in out and "stat(1)" in out and "s, 0.0min" in out
    f(1)
    assert capsys.readouterr().out == ""
    Memory(tmp_path, verbose=0).cache(Box.stat)(2)
    assert capsys.readouterr().out == ""
    g = Memory(tmp_path, verbose=11).cache(Box.stat)
    g(3)
    assert "Persisting in " + str(tmp_path) in capsys.readouterr().out
    # The function's verbosity decides, as in joblib (not its Memory's).
    Memory(tmp_path, verbose=0).cache(Box.stat, verbose=11)(4)
    assert "Persisting in " + str(tmp_path) in capsys.readouterr().out
    Memory(tmp_path, verbose=11).cache(Box.stat, verbose=0)(5)
    assert capsys.readouterr().out == ""


class _ClockAhead:
    """The ``time`` module, with ``time()`` ``ahead`` seconds in the future."""

    def __init__(self):
        self.ahead = 0.0

    def __getattr__(self, name):
        return getattr(time, name)

    def time(self):
        return time.time() + self.ahead


def test_expires_after_and_validation_callback(tmp_path, monkeypatch):
    # The clock that stamps and checks entries jumps ahead rather than the
    # test sleeping: with a 0.3 s expiry, a loaded machine could let the
    # first result expire before the second call looked it up.
    import cyjob.cache.memory

    clock = _ClockAhead()
    monkeypatch.setattr(cyjob.cache.memory, "time", clock)
    mem = Memory(tmp_path, verbose=0)
    n = []
    f = mem.cache(lambda x: n.append(x) or x, cache_validation_callback=expires_after(seconds=60))
    f(1)
    f(1)
    assert n == [1]
    clock.ahead = 61
    f(1)
    assert n == [1, 1]
    seen = []
    g = mem.cache(lambda x: x, cache_validation_callback=lambda meta: seen.append(meta) or True)
    g(2)
    g(2)
    assert set(seen[0]) >= {"duration", "time", "input_args"}
    assert seen[0]["input_args"] == {"x": "2"}


def test_numpy_results_and_mmap(tmp_path):
    a = np.random.RandomState(0).random_sample((50, 20))
    mem = Memory(tmp_path, verbose=0)
    f = mem.cache(lambda x: (x * 2, np.asfortranarray(x), x[:, ::3], np.float64(1), "s"))
    first = f(a)
    again = f(a)
    for x, y in zip(first[:3], again[:3]):
        np.testing.assert_array_equal(x, y)
        assert x.flags.f_contiguous == y.flags.f_contiguous
    assert again[1].flags.writeable
    again[0][0, 0] = 5.0  # a loaded array is the caller's to modify
    g = Memory(tmp_path, mmap_mode="r", verbose=0).cache(lambda x: x + 1)
    r1 = g(a)
    r2 = g(a)
    for r in (r1, r2):
        assert isinstance(r, np.memmap) and r.mode == "r"
        np.testing.assert_array_equal(r, a + 1)
    with pytest.raises(ValueError):
        r2[0, 0] = 1.0


@pytest.mark.parametrize("mode", ["r", "c"])
def test_mmap_of_empty_array_results_gives_memmaps(tmp_path, mode):
    # As joblib: an empty array comes back as an np.memmap too, at the
    # first call (mapped after writing) and at a hit.
    mem = Memory(tmp_path, mmap_mode=mode, verbose=0)
    f = mem.cache(lambda n: (np.empty(0), np.zeros((n, 0), "f4"), np.arange(n)))
    for result in (f(3), f(3)):
        assert all(isinstance(r, np.memmap) for r in result), [type(r) for r in result]
        assert result[1].shape == (3, 0) and result[1].dtype == np.float32
        np.testing.assert_array_equal(result[2], np.arange(3))


def _computed_once(tmp_path, mmap_mode, make, arg):
    """``make(arg)`` cached and called twice, warnings as errors (a result
    that cannot be stored or read back warns): its first result and the
    hit's, after asserting that ``make`` ran once."""
    calls = []

    def counted(n):
        calls.append(n)
        return make(n)

    f = Memory(tmp_path, mmap_mode=mmap_mode, verbose=0).cache(counted)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        first, again = f(arg), f(arg)
    assert calls == [arg]
    return first, again


@pytest.mark.parametrize("mmap_mode", [None, "r"])
def test_datetime_and_timedelta_arrays_are_cached(tmp_path, mmap_mode):
    # numpy cannot export datetime64/timedelta64 memory as a buffer: such a
    # result must still be stored (it was not: a warning, and a recomputation
    # at every call).
    values = (np.arange(6).astype("M8[s]"), np.zeros((3, 4), "m8[ns]", order="F"),
              np.array([(1, 2)], dtype=[("t", "M8[D]"), ("n", "i4")]),
              np.array(np.datetime64("2020-01-02")), np.arange(4).astype("M8[s]")[::2])
    first, again = _computed_once(tmp_path, mmap_mode, lambda n: values, 1)
    for result in (first, again):
        for got, expected in zip(result, values):
            assert got.dtype == expected.dtype and got.shape == expected.shape
            np.testing.assert_array_equal(got, expected)
    assert again[1].flags.f_contiguous


@pytest.mark.parametrize("mmap_mode", [None, "r"])
def test_arrays_of_zero_size_items_are_cached(tmp_path, mmap_mode):
    # An item of no bytes (a structured dtype without fields): its empty
    # buffer cannot be viewed as the dtype, and the entry was reported
    # unreadable and recomputed at every call.
    first, again = _computed_once(
        tmp_path, mmap_mode, lambda n: (np.zeros(n, dtype=np.dtype([])), np.zeros((n, 0))), 3)
    for result in (first, again):
        assert result[0].shape == (3,) and result[0].dtype == np.dtype([])
        assert result[1].shape == (3, 0)


def test_results_changed_through_r_plus_maps_are_read_back_not_recomputed(tmp_path):
    # mmap_mode="r+" writes reach the entry (joblib's rule): a later reader
    # without a map must read those bytes, not call them corrupt (their
    # checksums predate the writes), warn and recompute.
    calls = []

    def zeros(n):
        calls.append(n)
        return np.zeros(n)

    shared = Memory(tmp_path, mmap_mode="r+", verbose=0).cache(zeros)(1000)
    shared[:5] = 7.0
    shared.flush()
    del shared
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plain = Memory(tmp_path, verbose=0).cache(zeros)(1000)
    assert plain[:6].tolist() == [7.0] * 5 + [0.0] and calls == [1000]


def test_call_maps_its_output_under_mmap_mode(tmp_path):
    # joblib's MemorizedFunc.call returns the stored output mapped, as the
    # next cached call will (async call too).
    mem = Memory(tmp_path, mmap_mode="r", verbose=0)
    f = mem.cache(lambda n: np.arange(n))
    value, meta = f.call(4)
    assert isinstance(value, np.memmap) and value.tolist() == [0, 1, 2, 3]
    assert meta["input_args"] == {"n": "4"}

    async def coro(n):
        return np.arange(n)

    value, _ = asyncio.run(mem.cache(coro).call(3))
    assert isinstance(value, np.memmap) and value.tolist() == [0, 1, 2]


def test_compress(tmp_path):
    with pytest.warns(UserWarning, match="memmapped"):
        Memory(tmp_path, compress=True, mmap_mode="r", verbose=0)
    for compress in (True, 3, ("zlib", 1), ("bz2", 2), ("lzma", 1), ("xz", 1), "zstd"):
        mem = Memory(tmp_path / str(compress), compress=compress, verbose=0)
        f = mem.cache(lambda x: np.zeros(x))
        np.testing.assert_array_equal(f(100000), np.zeros(100000))
        np.testing.assert_array_equal(f(100000), np.zeros(100000))
        assert os.path.getsize(_entries(tmp_path / str(compress))[0]) < 100000


def test_cached_function_in_parallel_tasks_shares_entries(tmp_path):
    mem = Memory(tmp_path, verbose=0)
    f = mem.cache(Box.stat)
    assert Parallel(n_jobs=2, backend="threading")(delayed(f)(i) for i in range(20)) == \
        [i + 100 for i in range(20)]
    out = Parallel(n_jobs=2, backend="loky")(delayed(f)(i) for i in range(10, 30))
    assert out == [i + 100 for i in range(10, 30)]
    assert len(_entries(tmp_path)) == 30
    assert all(f.check_call_in_cache(i) for i in range(30))


# -- hashing, store, invalidation across processes -------------------------

def _run(code, cwd, timeout=60, **env):
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=cwd,
                         capture_output=True, text=True, timeout=timeout, env=child_env(**env))
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_keys_are_the_same_across_hash_seeds(tmp_path):
    code = """
        import cyjob
        mem = cyjob.Memory(%r, verbose=0)
        def f(d, s, fs):
            print("COMPUTED")
            return len(d)
        f = mem.cache(f)
        f({"alpha": 1, "beta": {"x", "y"}, "gamma": [1, 2]}, {"p", "q", "r"},
          frozenset(["u", "v", "w"]))
    """ % str(tmp_path)
    assert "COMPUTED" in _run(code, tmp_path, PYTHONHASHSEED="1")
    for seed in ("2", "3", "4242"):
        assert "COMPUTED" not in _run(code, tmp_path, PYTHONHASHSEED=seed)


def test_defaults_whose_repr_has_an_address_keep_entries_across_processes(tmp_path):
    # A sentinel default (object()), a function or an instance without a
    # repr of its own print their address, which changes in each process:
    # the version (made from the defaults' reprs) changed with it and every
    # new process wiped the function's cache.  joblib keeps the entries.
    code = """
        import cyjob
        _MISSING = object()
        class Options:
            pass
        def helper(v):
            return v
        def f(x, y=_MISSING, fn=helper, options=Options()):
            print("COMPUTED")
            return x
        cyjob.Memory(%r, verbose=0).cache(f)(1)
    """ % str(tmp_path)
    assert "COMPUTED" in _run(code, tmp_path)
    assert "COMPUTED" not in _run(code, tmp_path)


_MODULE = '''
def helper(x):
    return x + {helper_const}

def unrelated(x):
    return x - {unrelated_const}

def cached(x, k={default}):
    print("COMPUTED")
    return helper(x) * k
'''


def test_invalidation_by_code_defaults_and_helpers(tmp_path):
    pkg = tmp_path / "mypkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")

    def write(**consts):
        values = dict(helper_const=1, unrelated_const=1, default=2)
        values.update(consts)
        (pkg / "mod.py").write_text(_MODULE.format(**values))
        for cache in pkg.rglob("__pycache__"):
            shutil.rmtree(cache)

    code = """
        import cyjob
        from mypkg import mod
        f = cyjob.Memory(%r, verbose=1).cache(mod.cached)
        print("RESULT", f(10))
    """ % str(tmp_path / "cache")
    write()
    out = _run(code, tmp_path)
    assert "COMPUTED" in out and "RESULT 22" in out
    assert "COMPUTED" not in _run(code, tmp_path)
    write(unrelated_const=5)  # a function it does not call: entries stay
    assert "COMPUTED" not in _run(code, tmp_path)
    write(unrelated_const=5, helper_const=2)  # a helper it calls: recompute
    out = _run(code, tmp_path)
    assert "COMPUTED" in out and "RESULT 24" in out
    assert "helper() it calls changed" in out
    write(unrelated_const=5, helper_const=2, default=3)
    out = _run(code, tmp_path)
    assert "RESULT 36" in out and "default arguments changed" in out
    (pkg / "mod.py").write_text((pkg / "mod.py").read_text().replace(
        "* k", "* k + 1"))
    out = _run(code, tmp_path)
    assert "RESULT 37" in out and "its code changed" in out
    assert "COMPUTED" not in _run(code, tmp_path)


def test_code_reassignment_in_process_invalidates(tmp_path):
    mem = Memory(tmp_path, verbose=0)

    def f(x):
        return x + 1

    g = mem.cache(f)
    assert g(1) == 2
    f.__code__ = (lambda x: x + 2).__code__
    assert g(1) == 3


# -- single-flight ------------------------------------------------------------

_SLOW = """
import os, sys, time
import cyjob
mem = cyjob.Memory(sys.argv[1], verbose=0)
def slow(key, seconds):
    with open(os.path.join(sys.argv[2], "%d-%d" % (os.getpid(), key)), "w"):
        pass
    time.sleep(seconds)
    return key * 2
slow = mem.cache(slow, ignore=["seconds"])
keys = [int(k) for k in sys.argv[4].split(",")]
out = [slow(k, float(sys.argv[3])) for k in keys]
assert out == [k * 2 for k in keys], out
print("OK", out[-1])
"""


def _spawn_slow(tmp_path, keys, seconds):
    script = tmp_path / "slow.py"
    if not script.exists():  # rewriting it could truncate it under a starting racer
        tmp = tmp_path / "slow.py.tmp"
        tmp.write_text(_SLOW)
        os.replace(tmp, script)
    marks = tmp_path / "marks"
    marks.mkdir(exist_ok=True)
    return subprocess.Popen(
        [sys.executable, str(script), str(tmp_path / "cache"), str(marks), str(seconds),
         ",".join(map(str, keys))],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=child_env())


def test_four_processes_one_key_one_computation(tmp_path):
    procs = [_spawn_slow(tmp_path, [7], 1.0) for _ in range(4)]
    for p in procs:
        out, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
        assert out.strip() == "OK 14"
    assert len(os.listdir(tmp_path / "marks")) == 1


def test_eight_processes_fifty_keys_all_correct(tmp_path):
    import random

    procs = []
    for i in range(8):
        keys = list(range(50))
        random.Random(i).shuffle(keys)
        procs.append(_spawn_slow(tmp_path, keys, 0.0))
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    marks = os.listdir(tmp_path / "marks")
    assert sorted({int(m.split("-")[1]) for m in marks}) == list(range(50))
    assert len(marks) == 50  # each key computed once


def test_threads_one_key_one_computation(tmp_path):
    mem = Memory(tmp_path, verbose=0)
    n = []

    def slow(x):
        n.append(x)
        time.sleep(0.3)
        return x

    f = mem.cache(slow)
    threads = [threading.Thread(target=f, args=(1,)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert n == [1]


def test_sigkilled_computer_is_taken_over(tmp_path):
    victim = _spawn_slow(tmp_path, [3], 60.0)
    try:
        _take_over(tmp_path, victim)
    finally:
        if victim.poll() is None:
            victim.kill()
        victim.communicate(timeout=30)


def _take_over(tmp_path, victim):
    marks = tmp_path / "marks"
    deadline = time.monotonic() + 30
    while not os.listdir(marks):
        assert time.monotonic() < deadline
        time.sleep(0.02)
    waiter = _spawn_slow(tmp_path, [3], 0.2)
    time.sleep(0.5)
    assert waiter.poll() is None  # it waits for the victim's computation
    victim.send_signal(signal.SIGKILL)
    victim.wait(10)
    t0 = time.monotonic()
    try:
        out, err = waiter.communicate(timeout=30)
    finally:
        if waiter.poll() is None:
            waiter.kill()
            waiter.communicate()
    assert waiter.returncode == 0, err
    assert out.strip() == "OK 6"
    assert time.monotonic() - t0 < 10
    assert len(os.listdir(marks)) == 2
    assert not list((tmp_path / "cache").rglob("*tmp"))


# -- damaged, read-only, full stores ---------------------------------------------

def test_corrupted_and_truncated_entries_are_recomputed(tmp_path):
    mem = Memory(tmp_path, verbose=0)
    n = []
    f = mem.cache(lambda x: n.append(x) or np.arange(x))
    f(1000)
    (path,) = _entries(tmp_path)
    with open(path, "rb") as fh:
        data = bytearray(fh.read())
    for damage in ("flip", "truncate", "empty", "garbage", "flip-array"):
        bad = bytearray(data)
        if damage == "flip":
            bad[60] ^= 0xFF
        elif damage == "flip-array":
            bad[-10] ^= 0xFF
        elif damage == "truncate":
            bad = bad[: len(bad) // 2]
        elif damage == "empty":
            bad = b""
        else:
            bad = b"x" * 200
        with open(path, "wb") as fh:
            fh.write(bad)
        with pytest.warns(UserWarning, match="unreadable"):
            out = f(1000)
        np.testing.assert_array_equal(out, np.arange(1000))
        np.testing.assert_array_equal(f(1000), np.arange(1000))  # stored again
    assert len(n) == 6


@pytest.fixture
def read_only():
    """Make a folder tree read-only (chattr +i when root ignores modes)."""
    made = []

    def make(path):
        if os.geteuid() != 0:
            for root, dirs, _ in os.walk(path):
                os.chmod(root, 0o555)
            made.append(("chmod", path))
        elif shutil.which("chattr") and subprocess.run(
                ["chattr", "-R", "+i", str(path)], capture_output=True).returncode == 0:
            made.append(("chattr", path))
        else:
            pytest.skip("cannot make a read-only folder here")
    yield make
    for how, path in made:
        if how == "chattr":
            subprocess.run(["chattr", "-R", "-i", str(path)], capture_output=True)
        else:
            for root, dirs, _ in os.walk(path):
                os.chmod(root, 0o755)


def test_read_only_cache_folder(tmp_path, read_only):
    mem = Memory(tmp_path, verbose=0)
    f = mem.cache(Box.stat)
    f(1)
    read_only(tmp_path)
    mem2 = Memory(tmp_path, verbose=0)
    g = mem2.cache(Box.stat)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert g(1) == 101  # a hit still reads
        assert g(2) == 102 and g(3) == 103 and g(2) == 102
    msgs = [str(w.message) for w in caught]
    assert len(msgs) == 1 and "cannot write" in msgs[0], msgs


def test_full_disk_degrades_to_computing(tmp_path):
    code = """
        import resource, signal, warnings
        import numpy as np
        import cyjob
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
        mem = cyjob.Memory(%r, verbose=0)
        f = mem.cache(lambda n: np.ones(n))
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            assert f(10).sum() == 10
            assert f(100000).sum() == 100000
            assert f(200000).sum() == 200000
            g = mem.cache(lambda n: "x" * n)  # no array: the store's own small write
            assert g(100000) == "x" * 100000 and g(100000) == "x" * 100000
        print(len(w), [str(x.message)[:40] for x in w])
    """ % str(tmp_path)
    out = _run(code, tmp_path)
    assert out.startswith("1 ") and "cannot write" in out
    assert not list(tmp_path.rglob("*.tmp")) and not list(tmp_path.rglob("*.cyjob-tmp"))


# -- size bound ---------------------------------------------------------------------

def test_bytes_limit_evicts_least_recently_used(tmp_path):
    mem = Memory(tmp_path, verbose=0, bytes_limit="350K")
    f = mem.cache(lambda i: np.full(12_500, i, dtype=np.float64))  # ~100 KB each
    for i in range(3):
        f(i)
        time.sleep(1.1)  # mtimes one second apart; hits touch at most once a second
    f(0)  # use 0 again: now 1 is the least recently used
    time.sleep(1.1)
    f(3)  # over the limit: 1 goes
    assert f.check_call_in_cache(0) and f.check_call_in_cache(2) and f.check_call_in_cache(3)
    assert not f.check_call_in_cache(1)
    total = sum(os.path.getsize(p) for p in _entries(tmp_path))
    assert total <= 350 * 1024


def test_reduce_size(tmp_path):
    import datetime

    mem = Memory(tmp_path, verbose=0)
    f = mem.cache(lambda i: np.full(1000, i))
    for i in range(5):
        f(i)
        os.utime(_entries_for(f, i), (1000 + i, 1000 + i))
    mem.reduce_size(items_limit=3)
    assert [f.check_call_in_cache(i) for i in range(5)] == [False, False, True, True, True]
    size = os.path.getsize(_entries_for(f, 4))
    mem.reduce_size(bytes_limit=size + 1)
    assert [f.check_call_in_cache(i) for i in range(5)] == [False] * 4 + [True]
    mem.reduce_size(age_limit=datetime.timedelta(days=1))
    assert not f.check_call_in_cache(4)
    with pytest.raises(ValueError):
        mem.reduce_size(age_limit=datetime.timedelta(days=-1))
    mem.reduce_size()  # no limits: nothing to do


@pytest.mark.parametrize("limits, error", [
    (dict(items_limit=-1), ValueError),
    (dict(items_limit=1.5), TypeError),
    (dict(items_limit="3"), TypeError),
    (dict(items_limit=True), TypeError),
    (dict(age_limit=5), TypeError),
    (dict(bytes_limit=-1), ValueError),
])
def test_reduce_size_refuses_bad_limits_before_removing_anything(tmp_path, limits, error):
    import datetime

    mem = Memory(tmp_path, verbose=0)
    f = mem.cache(Box.stat)
    for i in range(3):
        f(i)
    name = next(iter(limits))
    with pytest.raises(error, match=name):
        mem.reduce_size(**limits)
    assert [f.check_call_in_cache(i) for i in range(3)] == [True] * 3
    with pytest.raises(error, match=name):
        Memory(None).reduce_size(**limits)
    mem.reduce_size(items_limit=np.int64(2), age_limit=datetime.timedelta(days=1))
    assert sum(f.check_call_in_cache(i) for i in range(3)) == 2


def _entries_for(f, *args):
    f.check_call_in_cache(*args)
    return f._dir + f._args_id(args, {})


def test_memory_clear(tmp_path):
    mem = Memory(tmp_path, verbose=0)
    f = mem.cache(Box.stat)
    f(1)
    mem.clear(warn=False)
    assert not _entries(tmp_path)
    assert not f.check_call_in_cache(1)
    assert f(1) == 101


def test_pickled_memory_and_function(tmp_path):
    mem = Memory(tmp_path, verbose=0, bytes_limit="1M")
    f = mem.cache(Box.stat)
    f(1)
    mem2 = pickle.loads(pickle.dumps(mem))
    g = pickle.loads(pickle.dumps(f))
    assert g.check_call_in_cache(1)
    assert mem2.cache(Box.stat).check_call_in_cache(1)


def test_plain_multiprocessing_pool_shares_one_computation_per_key(tmp_path):
    import multiprocessing

    mem = Memory(tmp_path / "cache", verbose=0)
    marks = tmp_path / "marks"
    marks.mkdir()
    f = mem.cache(_marking_square)
    with multiprocessing.get_context("fork").Pool(4) as pool:
        out = pool.starmap(f, [(k, str(marks)) for k in list(range(10)) * 4])
    assert out == [k * k for k in range(10)] * 4
    assert sorted(int(m.split("-")[1]) for m in os.listdir(marks)) == list(range(10))


def _marking_square(x, marks):
    open(os.path.join(marks, "%d-%d" % (os.getpid(), x)), "w").close()
    time.sleep(0.05)
    return x * x


def _race_readers_with_a_writer(f, seed, n_reads, check):
    """One thread stores f(seed) again and again (call() recomputes and
    stores) while two read it ``n_reads`` times each and ``check`` what
    they get; returns the readers' failures.  A corrupted-entry warning is
    an error."""
    stop = threading.Event()
    errors = []

    def writer():
        while not stop.is_set():
            f.call(seed)

    def reader():
        try:
            for _ in range(n_reads):
                check(f(seed))
        except BaseException as exc:  # reported by the caller
            errors.append(exc)

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        w = threading.Thread(target=writer)
        readers = [threading.Thread(target=reader) for _ in range(2)]
        w.start()
        for r in readers:
            r.start()
        for r in readers:
            r.join(60)
        stop.set()
        w.join(60)
    return errors


def test_readers_never_see_a_partial_entry(tmp_path):
    # Readers load a large entry while it is rewritten: whole values only.
    mem = Memory(tmp_path, verbose=0)
    f = mem.cache(lambda seed: np.full(2_000_000, seed, dtype=np.float64))
    f(7)

    def check(out):
        assert out.shape == (2_000_000,) and out[0] == 7 and out[-1] == 7

    assert _race_readers_with_a_writer(f, 7, 40, check) == []


def test_readers_never_see_a_partial_tiny_entry(tmp_path):
    # The same with a small result (no array: the store's os-level write).
    mem = Memory(tmp_path, verbose=0)
    f = mem.cache(lambda seed: [seed] * 5000)
    f(3)

    def check(out):
        assert out == [3] * 5000

    assert _race_readers_with_a_writer(f, 3, 2000, check) == []
    assert not list(tmp_path.rglob("*.cyjob-tmp"))


def test_writer_killed_while_storing_leaves_whole_entries_only(tmp_path):
    # A process stores small entries as fast as it can until SIGKILLed:
    # every entry left reads back whole, and the store cleans the dead
    # writer's temporary file, if the kill left one.
    code = """
        import itertools, sys, warnings
        import cyjob
        mem = cyjob.Memory(%r, verbose=0)
        f = mem.cache(lambda i: ("v", i, "x" * 3000))
        if sys.argv[1] == "write":
            for i in itertools.count():
                f.call(i %% 200)
                if i == 200:
                    print("STORED", flush=True)
        warnings.simplefilter("error")  # an unreadable entry fails the check
        assert all(f.check_call_in_cache(i) for i in range(200))
        assert [f(i) for i in range(200)] == [("v", i, "x" * 3000) for i in range(200)]
        mem.reduce_size()
        print("WHOLE")
    """ % str(tmp_path)
    code = textwrap.dedent(code)
    proc = subprocess.Popen([sys.executable, "-c", code, "write"], cwd=tmp_path,
                            stdout=subprocess.PIPE, text=True, env=child_env())
    try:
        assert proc.stdout.readline().strip() == "STORED"
        time.sleep(0.2)
    finally:
        proc.kill()
        proc.communicate(timeout=30)
    # A dead writer's temporary file is removed once older than the sweep's
    # grace period (cyjob.persist.atomic.is_stale_temp): age it past that.
    for temp in tmp_path.rglob("*.cyjob-tmp"):
        os.utime(temp, (time.time() - 60, time.time() - 60))
    out = subprocess.run([sys.executable, "-c", code, "check"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=60, env=child_env())
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "WHOLE"
    assert not list(tmp_path.rglob("*.cyjob-tmp"))


_MAIN_SCRIPT = """
import os, sys
import cyjob
from cyjob import Parallel, delayed
mem = cyjob.Memory(sys.argv[1], verbose=0)

@mem.cache
def square(x):
    print("COMPUTED", x, flush=True)
    return x * x

out = Parallel(n_jobs=2, backend=sys.argv[2])(delayed(square)(i) for i in range(4))
assert out == [0, 1, 4, 9], out
assert all(square.check_call_in_cache(i) for i in range(4))
print("DONE")
"""


@pytest.mark.parametrize("backend", ["threading", "loky"])
def test_functions_of_main_and_of_python_c(tmp_path, backend):
    script = tmp_path / "main_script.py"
    script.write_text(_MAIN_SCRIPT)
    cache = str(tmp_path / "cache")
    run = [sys.executable, str(script), cache, backend]
    first = subprocess.run(run, capture_output=True, text=True, timeout=120, env=child_env())
    assert first.returncode == 0, first.stderr
    assert first.stdout.count("COMPUTED") == 4
    again = subprocess.run(run, capture_output=True, text=True, timeout=120, env=child_env())
    assert again.returncode == 0 and "COMPUTED" not in again.stdout, again.stderr
    # Code typed at `python -c` has no source file: its bytecode versions it.
    code = _MAIN_SCRIPT.replace("sys.argv[1]", repr(cache + "-c")).replace(
        "sys.argv[2]", repr(backend))
    for expected in (4, 0):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             timeout=120, env=child_env())
        assert out.returncode == 0, out.stderr
        assert out.stdout.count("COMPUTED") == expected
    changed = code.replace("return x * x", "return x * x + 0 * 1")
    out = subprocess.run([sys.executable, "-c", changed], capture_output=True, text=True,
                         timeout=120, env=child_env())
    assert out.returncode == 0 and out.stdout.count("COMPUTED") == 4, out.stderr


def test_register_store_backend(tmp_path):
    from cyjob.cache.store import LocalStoreBackend

    class CountingStore(LocalStoreBackend):
        writes = 0

        def write_at(self, path, value, meta, duration):
            type(self).writes += 1
            return super().write_at(path, value, meta, duration)

    cyjob.register_store_backend("counting", CountingStore)
    mem = Memory(tmp_path, backend="counting", verbose=0)
    assert isinstance(mem.store_backend, CountingStore)
    f = mem.cache(Box.stat)
    assert f(1) == 101 and f(1) == 101 and f(2) == 102
    assert CountingStore.writes == 2
    with pytest.raises(ValueError, match="name should be a string"):
        cyjob.register_store_backend(3, CountingStore)
    with pytest.raises(ValueError, match="inherit StoreBackendBase"):
        cyjob.register_store_backend("bad", dict)
    with pytest.raises(TypeError, match="Unknown"):
        Memory(tmp_path, backend="nope")


@pytest.mark.parametrize("backend", ["threading", "loky"])
def test_parallel_workers_missing_one_key_compute_it_once(tmp_path, backend):
    mem = Memory(tmp_path / "cache", verbose=0)
    marks = tmp_path / "marks"
    marks.mkdir()
    f = mem.cache(_marking_square)
    out = Parallel(n_jobs=2, backend=backend, batch_size=1)(
        delayed(f)(3, str(marks)) for _ in range(6))
    assert out == [9] * 6
    assert len(os.listdir(marks)) == 1
