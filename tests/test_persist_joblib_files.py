"""cyjob.load reads the files joblib.dump writes (joblib 1.6 writes them
here; joblib's own old files come with it), and untrusted loads refuse what
they must."""

import os
import pickle
import re
import subprocess
import sys
import warnings

import numpy as np
import pytest

import cyjob
from cyjob import dump, load
from cyjob.persist import CorruptFileError, UntrustedTypeError
from persist_models import Model

joblib = pytest.importorskip("joblib")

METHODS = ["zlib", "gzip", "bz2", "lzma", "xz", "lz4"]


def sample():
    return {
        "c": np.arange(20.0),
        "f": np.asfortranarray(np.arange(12, dtype="i4").reshape(3, 4)),
        "view": np.arange(30.0).reshape(5, 6)[::2, ::3],
        "zero_d": np.array(7),
        "empty": np.empty((0, 3)),
        "structured": np.array([(1, 2.0)], dtype=[("a", "<i8"), ("b", "<f4")]),
        "object": np.array([1, "x", None], dtype=object),
        "big_endian": np.arange(5, dtype=">i8"),
        "model": Model(),
        "list": [np.ones(3), "text", 1.5],
        "bytes": np.arange(256, dtype=np.uint8).tobytes(),
    }


def check(loaded, expected, native=True):
    for key in ("c", "f", "view", "zero_d", "empty", "structured"):
        assert loaded[key].dtype == expected[key].dtype
        np.testing.assert_array_equal(loaded[key], expected[key])
    assert loaded["f"].flags.f_contiguous
    assert loaded["object"].tolist() == [1, "x", None]
    np.testing.assert_array_equal(loaded["big_endian"], np.arange(5))
    if native:
        assert loaded["big_endian"].dtype.isnative
    assert isinstance(loaded["model"], Model)
    np.testing.assert_array_equal(loaded["model"].fortran, expected["model"].fortran)
    assert loaded["model"].labels.tolist() == ["a", "bb", "c"]
    assert loaded["list"][1:] == ["text", 1.5] and loaded["bytes"] == expected["bytes"]


@pytest.mark.parametrize("compress", [0] + [(m, 3) for m in METHODS])
def test_files_written_by_joblib_load(tmp_path, compress):
    path = tmp_path / "joblib.pkl"
    value = sample()
    joblib.dump(value, path, compress=compress)
    check(load(path), value)


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_joblib_files_of_every_pickle_protocol(tmp_path, protocol):
    path = tmp_path / "joblib.pkl"
    value = sample()
    joblib.dump(value, path, protocol=protocol)
    check(load(path), value)


def test_joblib_files_memory_map(tmp_path):
    path = tmp_path / "joblib.pkl"
    value = sample()
    joblib.dump(value, path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loaded = load(path, mmap_mode="r")
    assert isinstance(loaded["c"], np.memmap) and not loaded["c"].flags.writeable
    assert isinstance(loaded["f"], np.memmap) and loaded["f"].flags.f_contiguous
    assert loaded["big_endian"].dtype == np.dtype(">i8")  # mapped as written
    assert not isinstance(loaded["object"], np.memmap)
    check(loaded, value, native=False)
    del loaded
    shared = load(path, mmap_mode="r+")
    shared["c"][:3] = -1
    shared["c"].flush()
    del shared
    np.testing.assert_array_equal(joblib.load(path)["c"][:4], [-1, -1, -1, 3])
    copy = load(path, mmap_mode="c")
    copy["c"][:] = 5
    assert joblib.load(path)["c"][5] == 5.0 and load(path)["c"][0] == -1


def test_compressed_joblib_file_with_mmap_warns(tmp_path):
    path = tmp_path / "joblib.pkl"
    joblib.dump(np.arange(10), path, compress=3)
    with pytest.warns(UserWarning, match="is not compatible with compressed file"):
        loaded = load(path, mmap_mode="r")
    assert not isinstance(loaded, np.memmap)


def test_joblib_file_objects(tmp_path):
    path = tmp_path / "joblib.pkl"
    value = sample()
    with open(path, "wb") as f:
        joblib.dump(value, f)
    with open(path, "rb") as f:
        check(load(f), value)


def test_joblibs_own_old_files():
    # Files joblib ships for its own tests: 0.8.4 to 0.11, every compressor,
    # Python 2 and 3 (Python 2's cannot be read, as with joblib).
    from joblib.test import data

    directory = os.path.dirname(data.__file__)
    expected = [np.arange(5, dtype="<i8"), np.arange(5, dtype="<f8"),
                np.array([1, "abc", {"a": 1, "b": 2}], dtype="O"),
                np.arange(256, dtype=np.uint8).tobytes(), np.array([[0, 1, 2]], dtype="<i8"),
                "C'est l'\xe9t\xe9 !"]
    seen = 0
    for name in sorted(os.listdir(directory)):
        if not name.endswith((".pkl", ".gz", ".gzip", ".bz2", ".lzma", ".xz", ".lz4")):
            continue
        path = os.path.join(directory, name)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if "_py27_" in name:
                with pytest.raises(ValueError, match="generated with python 2"):
                    load(path)
                continue
            for mmap_mode in ([None, "r"] if name.endswith(".pkl") else [None]):
                result = load(path, mmap_mode=mmap_mode)
                for got, want in zip(result, expected):
                    if isinstance(want, np.ndarray):
                        assert got.dtype == want.dtype, name
                        np.testing.assert_equal(np.asarray(got), np.asarray(want))
                    else:
                        assert got == want, name
        seen += 1
    assert seen >= 15


def test_joblib_0_9_files_warn_as_joblib_does():
    from joblib.test import data

    path = os.path.join(os.path.dirname(data.__file__),
                        "joblib_0.9.2_pickle_py35_np19.pkl")
    with pytest.warns(DeprecationWarning, match="generated with a joblib version less than"):
        load(path)


def test_joblib_files_load_without_joblib_installed(tmp_path):
    for compress in (0, ("gzip", 3), ("lz4", 1)):
        joblib.dump(sample(), tmp_path / "j.pkl", compress=compress)
        code = (
            "import sys; sys.modules['joblib'] = None\n"  # any import of joblib fails
            "import pickle, numpy as np, cyjob\n"
            f"sys.path.insert(0, {os.path.dirname(__file__)!r})\n"
            "value = cyjob.load(sys.argv[1])\n"
            "assert 'joblib' not in [m.split('.')[0] for m in sys.modules if sys.modules[m]]\n"
            "print(value['c'].sum(), type(value['model']).__name__)\n")
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(
            [os.path.dirname(os.path.dirname(cyjob.__file__)), os.path.dirname(__file__)]))
        out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "j.pkl")],
                             capture_output=True, text=True, timeout=60, env=env)
        assert out.returncode == 0, out.stderr
        assert out.stdout.split() == ["190.0", "Model"]


def test_truncated_joblib_files_raise_naming_the_file(tmp_path):
    for compress in (0, 3, ("xz", 3)):
        path = tmp_path / "j.pkl"
        joblib.dump({"a": np.arange(10000.0), "b": "x"}, path, compress=compress)
        raw = path.read_bytes()
        for cut in (len(raw) // 3, len(raw) - 20):
            bad = tmp_path / f"cut{cut}.pkl"
            bad.write_bytes(raw[:cut])
            with pytest.raises((CorruptFileError, pickle.UnpicklingError, ValueError)) as info:
                load(bad)
            if isinstance(info.value, CorruptFileError):
                assert str(bad) in str(info.value)



def test_damaged_joblib_files_raise_corrupt_file_error_naming_the_file(tmp_path):
    # joblib's files carry no checksums: the pickle stream itself is what
    # notices the damage, and it must say so as a CorruptFileError naming the
    # file, not as the unpickler's struct.error, KeyError or bare UnpicklingError.
    path = tmp_path / "j.pkl"
    joblib.dump({"a": np.arange(10000.0), "b": "x"}, path)
    raw = path.read_bytes()
    damaged = {"cut_in_frame_header": raw[:9], "cut_before_stop": raw[:-8],
               "bad_opcode": raw[:-1] + b"\xff"}
    for label, data in damaged.items():
        bad = tmp_path / f"{label}.pkl"
        bad.write_bytes(data)
        with pytest.raises(CorruptFileError, match=re.escape(str(bad))):
            load(bad)
    # a memory map of a file cut inside an array's bytes
    bad = tmp_path / "cut_in_array.pkl"
    bad.write_bytes(raw[:len(raw) // 2])
    with pytest.raises(CorruptFileError, match=re.escape(str(bad))):
        load(bad, mmap_mode="r")


# -- scikit-learn ---------------------------------------------------------------------

@pytest.mark.parametrize("writer", ["joblib", "cyjob"])
def test_scikit_learn_model_saved_with_joblib_predicts_the_same(tmp_path, writer):
    sklearn = pytest.importorskip("sklearn")
    from sklearn.datasets import make_classification
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    del sklearn
    X, y = make_classification(n_samples=300, n_features=8, random_state=0)
    model = make_pipeline(StandardScaler(),
                          RandomForestClassifier(n_estimators=10, random_state=0)).fit(X, y)
    path = tmp_path / "model.joblib"
    (joblib.dump if writer == "joblib" else dump)(model, path)
    for mmap_mode in (None, "r"):
        loaded = load(path, mmap_mode=mmap_mode)
        np.testing.assert_array_equal(loaded.predict(X), model.predict(X))
        np.testing.assert_array_equal(loaded.predict_proba(X), model.predict_proba(X))
    with pytest.raises(UntrustedTypeError, match="sklearn"):
        load(path, trusted=False)
    # The caller vouches for scikit-learn (and numpy's random state objects,
    # which its models hold).
    loaded = load(path, trusted=False, allowed=["sklearn.*", "numpy.random.*"])
    np.testing.assert_array_equal(loaded.predict(X), model.predict(X))


# -- untrusted loads -------------------------------------------------------------------

class Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


class Point:
    def __init__(self, x, y):
        self.x, self.y = x, y


@pytest.mark.parametrize("writer", ["cyjob", "joblib"])
def test_untrusted_load_lets_data_through(tmp_path, writer):
    value = {"a": np.arange(5.0), "f": np.asfortranarray(np.ones((2, 3))), "t": (1, "x"),
             "s": {1, 2}, "fs": frozenset([3]), "c": 1j, "b": b"x", "ba": bytearray(b"y"),
             "dt": np.dtype("f4"), "scalar": np.float32(2.5), "o": np.array([1, None], object),
             "r": range(3), "big": 10 ** 30}
    path = tmp_path / "x.pkl"
    (dump if writer == "cyjob" else joblib.dump)(value, path)
    loaded = load(path, trusted=False)
    assert loaded["t"] == (1, "x") and loaded["s"] == {1, 2} and loaded["c"] == 1j
    assert loaded["dt"] == np.dtype("f4") and loaded["scalar"] == np.float32(2.5)
    np.testing.assert_array_equal(loaded["f"], value["f"])
    assert loaded["o"].tolist() == [1, None] and loaded["r"] == range(3)


@pytest.mark.parametrize("writer", ["cyjob", "joblib"])
@pytest.mark.parametrize("compress", [0, 3])
def test_untrusted_load_refuses_code_before_it_runs(tmp_path, writer, compress):
    path = tmp_path / "x.pkl"
    marker = tmp_path / "ran"
    evil = type("E", (), {"__reduce__": lambda self: (os.mkdir, (str(marker),))})()
    (dump if writer == "cyjob" else joblib.dump)({"a": np.arange(3), "e": evil}, path,
                                                 compress=compress)
    with pytest.raises(UntrustedTypeError, match=r"refers to (posix|os)\.mkdir"):
        load(path, trusted=False)
    assert not marker.exists()
    load(path)  # a trusted load runs it: that is what pickle does
    assert marker.exists()


@pytest.mark.parametrize("writer", ["cyjob", "joblib"])
def test_untrusted_load_of_object_arrays_checks_their_elements(tmp_path, writer):
    path = tmp_path / "x.pkl"
    (dump if writer == "cyjob" else joblib.dump)(np.array([Evil()], dtype=object), path)
    with pytest.raises(UntrustedTypeError, match="system"):
        load(path, trusted=False)


def test_untrusted_load_lets_listed_types_through(tmp_path):
    path = tmp_path / "x.pkl"
    dump([Point(1, 2), Point(3, np.arange(2))], path)
    with pytest.raises(UntrustedTypeError, match=r"test_persist_joblib_files\.Point"):
        load(path, trusted=False)
    for allowed in ([Point], [f"{Point.__module__}.Point"]):
        loaded = load(path, trusted=False, allowed=allowed)
        assert loaded[0].x == 1 and loaded[1].y.tolist() == [0, 1]
    with pytest.raises(ValueError, match="trusted=False"):
        load(path, allowed=[Point])
    with pytest.raises(ValueError, match="module.name"):
        load(path, trusted=False, allowed=["Point"])


def test_untrusted_allowed_none_means_nothing_more_and_bad_values_name_it(tmp_path):
    # allowed= lists what an untrusted load lets through besides data: None
    # (a common spelling of "nothing") lets nothing more through, and a value
    # that is no list says so naming the parameter, before the file is read.
    path = tmp_path / "x.pkl"
    dump([1, np.arange(3)], path)
    assert load(path, trusted=False, allowed=None)[0] == 1
    assert load(path, allowed=None)[0] == 1
    dump(Point(1, 2), path)
    with pytest.raises(UntrustedTypeError, match="Point"):
        load(path, trusted=False, allowed=None)
    assert load(path, trusted=False, allowed=Point).x == 1  # one class: a list of it
    for bad in (5, 2.5):
        with pytest.raises(TypeError, match="allowed"):
            load(tmp_path / "missing.pkl", trusted=False, allowed=bad)


def test_untrusted_refuses_subclasses_and_sklearn_unless_listed(tmp_path):
    path = tmp_path / "x.pkl"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PendingDeprecationWarning)
        joblib.dump(np.matrix([[1, 2]]), path)
    with pytest.raises(UntrustedTypeError, match="numpy.*matrix"):
        load(path, trusted=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PendingDeprecationWarning)
        assert isinstance(load(path, trusted=False, allowed=[np.matrix]), np.matrix)


def test_untrusted_package_wildcards_cover_submodules_only(tmp_path):
    from cyjob.persist.restricted import Policy

    policy = Policy(["sklearn.*"])
    assert policy.allows("sklearn", "x") and policy.allows("sklearn.tree._tree", "Tree")
    assert not policy.allows("sklearnx", "x") and not policy.allows("os", "system")


@pytest.mark.parametrize("protocol", [0, 1])
def test_joblib_files_of_protocols_without_a_magic_number(tmp_path, protocol):
    path = tmp_path / "joblib.pkl"
    value = sample()
    joblib.dump(value, path, protocol=protocol)
    check(load(path), value)
    loaded = load(path, mmap_mode="r")
    assert isinstance(loaded["c"], np.memmap)
    np.testing.assert_array_equal(loaded["c"], value["c"])
