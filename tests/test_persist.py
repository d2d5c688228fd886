"""cyjob.dump / cyjob.load: round trips, every compressor, memory maps,
crash-safe writes, checksums and clear errors."""

import io
import os
import pickle
import re
import socket
import struct
import sys
import warnings

import numpy as np
import pytest

import cyjob
from cyjob import dump, load
from cyjob.persist import CorruptFileError, MissingCompressorError, format as fmt

ALL_METHODS = ["zlib", "gzip", "bz2", "lzma", "xz", "lz4", "zstd"]


def arrays():
    a = np.arange(60.0).reshape(6, 10)
    return {
        "c": a,
        "f": np.asfortranarray(a),
        "view": a[::2, 1::3],
        "zero_d": np.array(3.5),
        "empty": np.empty((0, 4)),
        "structured": np.array([(1, 2.5, b"ab"), (3, 4.5, b"cd")],
                               dtype=[("i", "<i4"), ("x", "<f8"), ("s", "S2")]),
        "object": np.array([1, "two", None, {"x": [3]}], dtype=object),
        "big_endian": np.arange(7, dtype=">f8"),
        "bool": np.array([True, False, True]),
        "complex": np.arange(5) * (1 + 2j),
        "datetime": np.array(["2024-01-01", "2025-06-30"], dtype="datetime64[D]"),
        "unicode": np.array(["ab", "cdé"]),
        "readonly": np.frombuffer(b"abcdefgh", dtype=np.uint8),
    }


def check_same(loaded, expected, native=True):
    assert type(loaded) is type(expected) or isinstance(loaded, np.ndarray)
    if native and expected.dtype.byteorder == (">" if sys.byteorder == "little" else "<"):
        assert loaded.dtype == expected.dtype.newbyteorder("=")
    else:
        assert loaded.dtype == expected.dtype
    assert loaded.shape == expected.shape
    if expected.dtype.hasobject:
        assert loaded.tolist() == expected.tolist()
    else:
        np.testing.assert_array_equal(loaded, expected)
    if expected.flags.f_contiguous and not expected.flags.c_contiguous:
        assert loaded.flags.f_contiguous


@pytest.mark.parametrize("compress", [0, 3, True] + ALL_METHODS)
def test_round_trip_every_kind_of_array(tmp_path, compress):
    path = tmp_path / "x.pkl"
    value = {"arrays": arrays(), "nested": [arrays()["c"], (arrays()["f"], "s")], "n": 1}
    assert dump(value, path, compress=compress) == [str(path)]
    loaded = load(path)
    for key, expected in value["arrays"].items():
        check_same(loaded["arrays"][key], expected)
        assert loaded["arrays"][key].flags.writeable  # as joblib: loaded arrays are writable
    check_same(loaded["nested"][0], value["nested"][0])
    check_same(loaded["nested"][1][0], value["nested"][1][0])
    assert loaded["n"] == 1 and loaded["nested"][1][1] == "s"


def test_byte_order_is_kept_when_asked(tmp_path):
    path = tmp_path / "x.pkl"
    dump([np.arange(5, dtype=">i8"), np.arange(5, dtype="<i8")], path)
    be, le = load(path, ensure_native_byte_order=False)
    assert be.dtype == np.dtype(">i8") and le.dtype == np.dtype("<i8")
    np.testing.assert_array_equal(be, np.arange(5))
    be, le = load(path)
    assert be.dtype.isnative and le.dtype.isnative
    with pytest.raises(ValueError, match="Native byte ordering can only be enforced"):
        load(path, mmap_mode="r", ensure_native_byte_order=True)


class Holder:
    def __init__(self, **kw):
        self.__dict__.update(kw)


def test_arrays_inside_user_objects_and_shared_references(tmp_path):
    a = np.arange(10)
    value = Holder(a=a, b=a, m=np.memmap(tmp_path / "m.dat", mode="w+", shape=(3,), dtype="f4"))
    value.m[:] = [1, 2, 3]
    dump(value, tmp_path / "x.pkl")
    loaded = load(tmp_path / "x.pkl")
    assert isinstance(loaded, Holder)
    assert loaded.a is loaded.b  # one array, stored once
    assert type(loaded.m) is np.ndarray  # a memmap is stored as its array (as joblib)
    np.testing.assert_array_equal(loaded.m, [1, 2, 3])


@pytest.mark.filterwarnings("ignore:the matrix subclass:PendingDeprecationWarning")
def test_matrix_and_masked_arrays(tmp_path):
    value = [np.matrix([[1, 2], [3, 4]]), np.ma.masked_greater(np.arange(5), 2)]
    dump(value, tmp_path / "x.pkl")
    m, ma = load(tmp_path / "x.pkl")
    assert isinstance(m, np.matrix) and isinstance(ma, np.ma.MaskedArray)
    np.testing.assert_array_equal(ma.mask, value[1].mask)


def test_standard_types(tmp_path):
    for value in [None, 1, 2.5, 1j, "é", b"x", (), [], {}, {1, 2}, frozenset([3]), len,
                  range(3), Holder, 10 ** 40]:
        dump(value, tmp_path / "x.pkl")
        assert load(tmp_path / "x.pkl") == value


# -- compression --------------------------------------------------------------

@pytest.mark.parametrize("method", ALL_METHODS)
def test_large_arrays_compress_in_many_frames(tmp_path, method):
    # More than MIN_PARALLEL_CHUNKS frames: compressed on the thread pool.
    n = 3 * fmt.FRAME_CHUNK // 8 + 1234
    a = np.round(np.random.default_rng(0).standard_normal(n), 2)
    path = tmp_path / "x.pkl"
    dump({"a": a, "tail": a[:10].copy()}, path, compress=(method, 1))
    assert os.path.getsize(path) < a.nbytes
    loaded = load(path)
    np.testing.assert_array_equal(loaded["a"], a)
    np.testing.assert_array_equal(loaded["tail"], a[:10])


@pytest.mark.parametrize("ext, method", [(".z", "zlib"), (".gz", "gzip"), (".bz2", "bz2"),
                                         (".lzma", "lzma"), (".xz", "xz"), (".lz4", "lz4"),
                                         (".zst", "zstd")])
def test_extension_picks_the_method(tmp_path, ext, method):
    path = tmp_path / ("x.pkl" + ext)
    dump(np.zeros(1000), path)
    with open(path, "rb") as f:
        header = fmt.Header(f.read(fmt.HEADER_SIZE), "x")
    assert header.codec is not None and header.codec.name == method
    # An explicit method wins over the extension.
    dump(np.zeros(1000), path, compress=("zlib", 3))
    with open(path, "rb") as f:
        assert fmt.Header(f.read(fmt.HEADER_SIZE), "x").codec.name == "zlib"
    np.testing.assert_array_equal(load(path), np.zeros(1000))


def test_level_zero_and_false_write_uncompressed(tmp_path):
    for compress in (0, False, ("zlib", 0)):
        dump(np.zeros(1000), tmp_path / "x.pkl", compress=compress)
        with open(tmp_path / "x.pkl", "rb") as f:
            assert fmt.Header(f.read(fmt.HEADER_SIZE), "x").codec is None


@pytest.mark.parametrize("compress, match", [
    (-1, 'Non valid compress level given: "-1"'),
    (10, 'Non valid compress level given: "10"'),
    ({}, 'Non valid compress level given'),
    (("zlib", 3, "x"), "exactly 2 elements"),
    (("nope", 3), 'Non valid compression method given: "nope"'),
    ("nope", 'Non valid compression method given: "nope"'),
    (("zlib", "3"), 'Non valid compress level given: "3"'),
    (("zstd", 23), 'Non valid compress level given: "23"'),
])
def test_bad_compress_is_refused_before_writing(tmp_path, compress, match):
    path = tmp_path / "x.pkl"
    with pytest.raises(ValueError, match=match):
        dump("data", path, compress=compress)
    assert not os.listdir(tmp_path)



@pytest.mark.parametrize("compress", [np.int64(3), ("zlib", np.int32(3)), ("zstd", np.uint8(19))])
def test_numpy_integer_levels(tmp_path, compress):
    # A level read from an array or a config parsed by numpy is an int: it
    # was refused with 'Non valid compress level given: "3"', 3 being valid.
    path = tmp_path / "x.pkl"
    dump(np.arange(1000), path, compress=compress)
    np.testing.assert_array_equal(load(path), np.arange(1000))
    with open(path, "rb") as f:
        assert fmt.Header(f.read(fmt.HEADER_SIZE), "x").codec is not None


def test_zstd_levels_beyond_nine(tmp_path):
    dump(np.arange(1000), tmp_path / "x.pkl", compress=("zstd", 19))
    np.testing.assert_array_equal(load(tmp_path / "x.pkl"), np.arange(1000))


@pytest.mark.parametrize("method, package", [("zstd", "zstandard"), ("lz4", "lz4")])
def test_missing_optional_package_names_the_extra(tmp_path, monkeypatch, method, package):
    dump(np.arange(100), tmp_path / "ok.pkl", compress=method)
    monkeypatch.setitem(sys.modules, package, None)  # import now fails
    with pytest.raises(MissingCompressorError, match=r'pip install "cyjob\[compress\]"'):
        dump("x", tmp_path / "x.pkl", compress=method)
    with pytest.raises(MissingCompressorError, match=package):
        dump("x", tmp_path / ("x.pkl" + (".zst" if method == "zstd" else ".lz4")))
    with pytest.raises(MissingCompressorError, match=r"cyjob\[compress\]"):
        load(tmp_path / "ok.pkl")
    assert sorted(os.listdir(tmp_path)) == ["ok.pkl"]


# -- memory maps ----------------------------------------------------------------

def test_mmap_modes(tmp_path):
    path = tmp_path / "x.pkl"
    value = {"f": np.arange(100.0), "i": np.ones((10, 3), "i4", order="F"),
             "o": np.array(["a", 1], dtype=object), "s": "text"}
    dump(value, path)
    loaded = load(path, mmap_mode="r")
    assert isinstance(loaded["f"], np.memmap) and not loaded["f"].flags.writeable
    assert isinstance(loaded["i"], np.memmap) and loaded["i"].flags.f_contiguous
    assert not isinstance(loaded["o"], np.memmap)  # object arrays are in the pickle
    assert loaded["f"].ctypes.data % 64 == 0 and loaded["i"].ctypes.data % 64 == 0
    assert loaded["f"].filename == str(path.resolve())
    assert loaded["f"].offset > 0 and loaded["f"].offset % 64 == 0
    np.testing.assert_array_equal(loaded["i"], value["i"])
    del loaded

    copy = load(path, mmap_mode="c")
    copy["f"][:] = -1  # copy-on-write: the file does not change
    assert load(path)["f"][5] == 5.0
    del copy

    for mode in ("r+", "w+"):  # "w+" means "r+" (joblib's rule): never truncates
        shared = load(path, mmap_mode=mode)
        assert shared["f"].mode == "r+"
        shared["f"][:10] = 42.0
        shared["f"].flush()
        del shared
        assert load(path)["f"][3] == 42.0
    np.testing.assert_array_equal(load(path)["f"][10:], np.arange(10.0, 100.0))


def test_mmap_of_a_compressed_file_warns_and_loads(tmp_path):
    path = tmp_path / "x.pkl"
    dump(np.arange(10.0), path, compress=1)
    with pytest.warns(UserWarning) as record:
        loaded = load(path, mmap_mode="r+")
    assert len(record) == 1
    assert str(record[0].message) == (f'mmap_mode "r+" is not compatible with compressed '
                                      f'file {path}. "r+" flag will be ignored.')
    assert not isinstance(loaded, np.memmap)



@pytest.mark.parametrize("writer", ["cyjob", "joblib", "wrapped"])
def test_mmap_of_a_compressed_file_warns_at_the_caller(tmp_path, writer):
    # The warning points at the line that called load (as warnings should:
    # filters by module and "once per location" rely on it), whatever the
    # depth at which cyjob finds the file compressed.
    path = tmp_path / "x.pkl"
    if writer == "joblib":
        joblib = pytest.importorskip("joblib")
        joblib.dump(np.arange(10.0), path, compress=3)
    elif writer == "wrapped":
        import gzip

        with gzip.open(path, "wb") as f:
            dump(np.arange(10.0), f)
    else:
        dump(np.arange(10.0), path, compress=3)
    with pytest.warns(UserWarning, match="is not compatible with compressed") as record:
        load(path, mmap_mode="r")
    assert [w.filename for w in record] == [__file__]


def test_mmap_of_a_big_offset_and_many_arrays(tmp_path):
    import mmap

    size = mmap.ALLOCATIONGRANULARITY
    value = [np.zeros(size, "uint8"), np.ones(size, "uint8")] + [
        np.arange(k, dtype=np.uint8) for k in (2, 3, 5, 7, 11)]
    dump(value, tmp_path / "x.pkl")
    loaded = load(tmp_path / "x.pkl", mmap_mode="r")
    assert loaded[1].offset > size
    for got, expected in zip(loaded, value):
        assert isinstance(got, np.memmap) and got.ctypes.data % 64 == 0
        np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("mode", ["r", "r+", "c"])
def test_mmap_of_empty_arrays_gives_memmaps(tmp_path, mode):
    # joblib returns an np.memmap for an empty array too (and the README
    # promises one for every non-object array); numpy turns an empty slice
    # of a map into a plain ndarray, and a zero-length mmap maps the file.
    import mmap

    value = [np.empty(0), np.zeros((0, 3), "f4"), np.zeros((2, 0), order="F"),
             np.zeros(mmap.ALLOCATIONGRANULARITY, "uint8")]
    dump(value, tmp_path / "x.pkl")
    loaded = load(tmp_path / "x.pkl", mmap_mode=mode)
    for got, expected in zip(loaded, value):
        assert isinstance(got, np.memmap), (expected.shape, type(got))
        assert got.shape == expected.shape and got.dtype == expected.dtype
        assert got.filename == str((tmp_path / "x.pkl").resolve())
    assert load(tmp_path / "x.pkl", mmap_mode=mode)[3].sum() == 0


@pytest.mark.parametrize("compress", [0, 3])
def test_datetime_and_timedelta_arrays_map_like_any_other(tmp_path, compress):
    # numpy pickles these in band (it exports no buffer of them): they too
    # must go out of band, so that mmap_mode maps them (joblib maps them).
    value = [np.arange(6).astype("M8[s]"), np.zeros((3, 4), "m8[ns]", order="F"),
             np.array([(1, 2)], dtype=[("t", "M8[D]"), ("n", "i4")]),
             np.arange(8).astype("M8[ms]")[::3], np.array(np.datetime64("2020-01-02"))]
    path = tmp_path / "x.pkl"
    dump(value, path, compress=compress)
    for loaded in (load(path), load(io.BytesIO(path.read_bytes()))):
        for got, expected in zip(loaded, value):
            assert type(got) is np.ndarray and got.dtype == expected.dtype
            np.testing.assert_array_equal(got, expected)
    if not compress:
        mapped = load(path, mmap_mode="r")
        for got, expected in zip(mapped, value):
            assert isinstance(got, np.memmap), expected.dtype
            np.testing.assert_array_equal(got, expected)
        assert mapped[1].flags.f_contiguous


# -- files, paths, streams -------------------------------------------------------

class CustomPath(os.PathLike):
    def __init__(self, path):
        self.path = path

    def __fspath__(self):
        return str(self.path)


def test_paths_and_file_objects(tmp_path):
    value = {"a": np.arange(5), "b": "x"}
    assert dump(value, CustomPath(tmp_path / "p.pkl")) == [str(tmp_path / "p.pkl")]
    assert load(CustomPath(tmp_path / "p.pkl"))["b"] == "x"
    assert dump(value, str(tmp_path / "s.pkl")) == [str(tmp_path / "s.pkl")]
    with open(tmp_path / "f.pkl", "wb") as f:
        assert dump(value, f, compress=3) is None  # as joblib: nothing for file objects
        dump([1, 2], f)  # two dumps in one file, read back in turn
    with open(tmp_path / "f.pkl", "rb") as f:
        np.testing.assert_array_equal(load(f)["a"], np.arange(5))
        assert load(f) == [1, 2]


def test_bytesio_and_mmap_warning():
    buffer = io.BytesIO()
    dump(np.arange(10), buffer)
    buffer.seek(0)
    with pytest.warns(UserWarning, match="In memory persistence is not compatible"):
        np.testing.assert_array_equal(load(buffer, mmap_mode="r+"), np.arange(10))


@pytest.mark.parametrize("compress", [0, 3])
def test_unseekable_streams(compress):
    value = {"a": np.arange(1000.0), "o": np.array([None, "x"], dtype=object)}
    left, right = socket.socketpair()
    with left, right:
        with left.makefile("wb") as out:
            dump(value, out, compress=compress)
        left.shutdown(socket.SHUT_WR)
        with right.makefile("rb") as stream:
            loaded = load(stream)
    np.testing.assert_array_equal(loaded["a"], value["a"])
    assert loaded["o"].tolist() == [None, "x"]


def test_bad_filenames(tmp_path):
    with pytest.raises(ValueError, match="Second argument should be a filename"):
        dump("foo", {})
    with pytest.raises(IsADirectoryError, match="is a directory"):
        dump("foo", tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        dump("foo", tmp_path / "missing" / "x.pkl")
    with pytest.raises(FileNotFoundError):
        load(tmp_path / "absent.pkl")
    with pytest.raises(ValueError, match="mmap_mode must be one of"):
        load(tmp_path / "absent.pkl", mmap_mode="rw")
    with pytest.raises(TypeError, match="filename must be"):
        load(12)
    assert not os.listdir(tmp_path)



def test_a_filename_ending_in_a_separator_is_refused_naming_it(tmp_path):
    # open(name + "/", "wb") says "Is a directory" (joblib's error): the name
    # cannot be a file, whether or not the directory exists; it raised a
    # FileNotFoundError naming the dump's temporary file instead.
    for name in (str(tmp_path / "absent") + os.sep, str(tmp_path / "x.pkl") + os.sep):
        with pytest.raises(IsADirectoryError, match=re.escape(repr(name))):
            dump("foo", name)
    assert not os.listdir(tmp_path)


def test_an_empty_filename_is_refused_before_writing(tmp_path, monkeypatch):
    # "" names no file: refused up front, as open("") would, not after the
    # whole value was written to a temporary file that os.replace then fails on.
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match="empty") as info:
        dump(Unpicklable(), "")
    assert info.value.filename == ""
    assert not os.listdir(tmp_path)



def test_text_mode_files_are_refused_naming_binary_mode(tmp_path):
    path = tmp_path / "x.pkl"
    with open(path, "w") as text:
        with pytest.raises(TypeError, match="binary mode"):
            dump(Unpicklable(), text)  # refused before the value is pickled
    with pytest.raises(TypeError, match="binary mode"):
        dump({"a": 1}, io.StringIO())
    dump({"a": 1}, path)
    with open(path, encoding="latin-1") as text:
        with pytest.raises(TypeError, match="binary mode"):
            load(text)


def test_neither_cyjob_nor_joblib(tmp_path):
    (tmp_path / "text.txt").write_text("hello world")
    with pytest.raises(ValueError, match="neither a cyjob nor a joblib file"):
        load(tmp_path / "text.txt")
    (tmp_path / "empty").write_bytes(b"")
    with pytest.raises(ValueError, match="is empty"):
        load(tmp_path / "empty")


def test_newer_format_version_is_refused(tmp_path):
    path = tmp_path / "x.pkl"
    dump(1, path)
    raw = bytearray(path.read_bytes())
    head = fmt._HEADER.pack(fmt.MAGIC, fmt.VERSION + 1, 0, 0, fmt.HASH_CHUNK,
                            *fmt._HEADER.unpack_from(raw)[5:7], b"")
    raw[:fmt.HEADER_SIZE] = head + fmt._U64.pack(fmt._digest(head))
    path.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="format version 2.*upgrade cyjob"):
        load(path)


# -- crash safety -----------------------------------------------------------------

class Unpicklable:
    def __reduce__(self):
        raise RuntimeError("cannot pickle this")


def test_a_failed_dump_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "x.pkl"
    dump({"v": 1}, path)
    with pytest.raises(RuntimeError, match="cannot pickle"):
        dump({"v": 2, "bad": Unpicklable(), "a": np.arange(10)}, path)
    assert load(path) == {"v": 1}
    assert os.listdir(tmp_path) == ["x.pkl"]


def test_a_failed_write_removes_the_temporary(tmp_path, monkeypatch):
    path = tmp_path / "x.pkl"

    def full_disk(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(fmt._Sink, "_write", full_disk)
    with pytest.raises(OSError, match="No space left"):
        dump(np.zeros(100000), path, compress=3)
    assert os.listdir(tmp_path) == []


# -- corruption -------------------------------------------------------------------

def _sample(compress):
    a = np.arange(200_000, dtype="f8")
    return {"a": a, "b": np.ones((50, 4)), "s": "some text" * 100, "l": list(range(100))}, a


def _assert_corrupt_is_detected(path):
    with pytest.raises((CorruptFileError, ValueError)) as info:
        load(path)
    assert str(path) in str(info.value) or repr(str(path)) in str(info.value)


@pytest.mark.parametrize("compress", [0, ("zlib", 1), ("zstd", 1)])
def test_truncated_files_raise_naming_the_file(tmp_path, compress):
    value, _ = _sample(compress)
    full = tmp_path / "full.pkl"
    dump(value, full, compress=compress)
    raw = full.read_bytes()
    for cut in (1, 10, fmt.HEADER_SIZE + 3, len(raw) // 3, len(raw) // 2, len(raw) - 9,
                len(raw) - 1):
        path = tmp_path / f"cut{cut}.pkl"
        path.write_bytes(raw[:cut])
        _assert_corrupt_is_detected(path)
        if compress == 0 and cut > fmt.HEADER_SIZE:
            with pytest.raises(CorruptFileError, match="truncated"):
                load(path, mmap_mode="r")



@pytest.mark.parametrize("compress", [0, 3])
@pytest.mark.parametrize("part", ["pickle", "buffer", "table"])
def test_the_first_bytes_of_a_huge_file_raise_truncated(tmp_path, compress, part):
    # The header and table of a file far larger than memory, cut short (a
    # copy interrupted): the sizes they declare cannot fit in what is left
    # of the file, which says "truncated" before allocating them (that
    # raised MemoryError: "Unable to allocate 1.00 PiB").
    path = tmp_path / "x.pkl"
    dump({"a": np.arange(10.0)}, path, compress=compress)
    raw = path.read_bytes()
    header = fmt.Header(raw[:fmt.HEADER_SIZE], "x")
    huge = 1 << 50
    sizes = [huge if part == "buffer" else 80]
    n_buffers = huge if part == "table" else 1
    pickle_size = huge if part == "pickle" else header.pickle_size
    table = struct.pack("<Q", sizes[0])
    path.write_bytes(fmt.pack_header(header.codec_id, 0, header.chunk, pickle_size, n_buffers)
                     + table + struct.pack("<Q", fmt._digest(table))
                     + raw[fmt.HEADER_SIZE + 16:])
    with pytest.raises(CorruptFileError, match=f"{re.escape(repr(str(path)))} is truncated"):
        load(path)
    # The same bytes in memory (a download cut short, read into a BytesIO).
    with pytest.raises(CorruptFileError, match="is truncated"):
        load(io.BytesIO(path.read_bytes()))


def _segments(raw):
    """Offsets of the header, table, pickle and first buffer of an
    uncompressed cyjob file."""
    header = fmt.Header(raw[:fmt.HEADER_SIZE], "x")
    table = fmt.HEADER_SIZE
    pickle_start = table + 8 * header.n_buffers + 8
    first_buffer = pickle_start + header.pickle_size + 8
    first_buffer += -first_buffer % fmt.ALIGN
    return {"header": 20, "table": table + 2, "pickle": pickle_start + header.pickle_size // 2,
            "buffer": first_buffer + 12345, "buffer checksum": None}


@pytest.mark.parametrize("where", ["header", "table", "pickle", "buffer"])
def test_flipped_byte_is_detected(tmp_path, where):
    value, a = _sample(0)
    path = tmp_path / "x.pkl"
    dump(value, path)
    raw = bytearray(path.read_bytes())
    offset = _segments(raw)[where]
    raw[offset] ^= 0x40
    path.write_bytes(bytes(raw))
    with pytest.raises(CorruptFileError, match="corrupt") as info:
        load(path)
    assert repr(str(path)) in str(info.value)


@pytest.mark.parametrize("method", ["zlib", "zstd", "lz4", "bz2"])
def test_flipped_byte_in_a_compressed_frame_is_detected(tmp_path, method):
    value, _ = _sample(0)
    path = tmp_path / "x.pkl"
    dump(value, path, compress=(method, 1))
    raw = bytearray(path.read_bytes())
    for offset in (len(raw) // 2, len(raw) - 40, fmt.HEADER_SIZE + 30):
        bad = bytearray(raw)
        bad[offset] ^= 0x01
        path.write_bytes(bytes(bad))
        with pytest.raises(CorruptFileError) as info:
            load(path)
        assert repr(str(path)) in str(info.value)


def test_top_level_api_names():
    assert cyjob.dump is dump and cyjob.load is load
    assert callable(cyjob.register_compressor)
    assert cyjob.persist.dump is dump and cyjob.persist.NUMPY_ARRAY_ALIGNMENT_BYTES == 64
    with pytest.raises(AttributeError):
        cyjob.not_a_name  # noqa: B018


def test_protocol_argument(tmp_path):
    dump(np.zeros(10), tmp_path / "x.pkl", protocol=pickle.HIGHEST_PROTOCOL)
    np.testing.assert_array_equal(load(tmp_path / "x.pkl"), np.zeros(10))
    with pytest.raises(ValueError, match="protocol"):
        dump(1, tmp_path / "x.pkl", protocol=99)


def test_no_warnings_on_plain_round_trips(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dump(arrays(), tmp_path / "x.pkl")
        load(tmp_path / "x.pkl")
        load(tmp_path / "x.pkl", mmap_mode="r")


# -- memory and real crashes (subprocesses) -------------------------------------

MEMORY_SCRIPT = r"""
import sys
import numpy as np
from cyjob import dump, load

def peak():
    # The high-water mark of RSS since the last reset (Linux).
    with open("/proc/self/status") as f:
        kb = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return kb * 1024

path, compress = sys.argv[1], sys.argv[2]
compress = 0 if compress == "0" else (compress, 1)
a = np.round(np.random.default_rng(0).standard_normal(100 * 2**20 // 8), 1)
dump(np.arange(10), path, compress=compress)   # warm up the thread pool
load(path)
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096

peak()
base = rss()
dump(a, path, compress=compress)
dump_growth = peak() - base
base = rss()
b = load(path)
load_growth = peak() - base
assert np.array_equal(a, b)
print(a.nbytes, dump_growth, load_growth)
"""


@pytest.mark.timeout(120)
@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="Linux peak RSS")
@pytest.mark.parametrize("compress", ["0", "zstd"])
def test_dump_does_not_copy_the_array(tmp_path, compress):
    import subprocess

    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [os.path.dirname(os.path.dirname(cyjob.__file__))] + sys.path))
    out = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT, str(tmp_path / "x.pkl"),
                          compress], capture_output=True, text=True, timeout=100, env=env)
    assert out.returncode == 0, out.stderr
    nbytes, dump_growth, load_growth = map(int, out.stdout.split())
    # Uncompressed: written straight from the array's memory; compressed: a
    # few chunks in flight per thread.
    assert dump_growth <= 0.1 * nbytes, (dump_growth, nbytes)
    # Loading needs the array itself, and little more.
    assert load_growth <= 1.1 * nbytes + (0 if compress == "0" else 40 * 2**20)


CRASH_SCRIPT = r"""
import sys
import numpy as np
from cyjob import dump

a = np.arange(40 * 2**20 // 8, dtype=np.float64)
print("ready", flush=True)
while True:
    dump({"version": 2, "a": a}, sys.argv[1], compress=int(sys.argv[2]))
"""


@pytest.mark.timeout(120)
@pytest.mark.parametrize("compress", [0, 1])
def test_sigkill_in_the_middle_of_a_dump_leaves_the_old_file(tmp_path, compress):
    import signal
    import subprocess
    import time

    target = tmp_path / "model.pkl"
    dump({"version": 1}, target)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [os.path.dirname(os.path.dirname(cyjob.__file__))] + sys.path))
    for delay in (0.0, 0.05, 0.2):
        child = subprocess.Popen([sys.executable, "-c", CRASH_SCRIPT, str(target),
                                  str(compress)], stdout=subprocess.PIPE, env=env)
        try:
            assert child.stdout.readline() == b"ready\n"
            deadline = time.monotonic() + 60
            # Kill it while a temporary file is being written.
            while not any(n.endswith(".cyjob-tmp") for n in os.listdir(tmp_path)):
                assert time.monotonic() < deadline, "the child never started a dump"
                time.sleep(0.001)
            time.sleep(delay)
            child.send_signal(signal.SIGKILL)
        finally:
            child.kill()
            child.wait(timeout=30)
            child.stdout.close()
        loaded = load(target)
        assert loaded["version"] in (1, 2)
        if loaded["version"] == 2:
            np.testing.assert_array_equal(loaded["a"][:5], np.arange(5.0))
            assert loaded["a"].size == 40 * 2**20 // 8
        # What the killed process leaves: its temporary file, never a torn target.
        for name in os.listdir(tmp_path):
            if name.endswith(".cyjob-tmp"):
                os.unlink(tmp_path / name)


def test_register_compressor_wraps_the_whole_file(tmp_path):
    import bz2
    import uuid

    from cyjob.persist import CompressorWrapper, codecs, register_compressor

    name = "test-" + uuid.uuid4().hex

    class Wrapper(CompressorWrapper):
        def __init__(self):
            super().__init__(obj=bz2.BZ2File, prefix=b"BZh", extension=".tbzz")

    register_compressor(name, Wrapper())
    try:
        with pytest.raises(ValueError, match="already registered"):
            register_compressor(name, Wrapper())
        register_compressor(name, Wrapper(), force=True)
        value = {"a": np.arange(1000.0), "s": "x"}
        for target, compress in ((tmp_path / "x.pkl", name), (tmp_path / "y.tbzz", 0)):
            dump(value, target, compress=compress)
            with bz2.open(target) as f:  # the whole cyjob file, compressed
                assert f.read(8) == fmt.MAGIC
            with pytest.warns(UserWarning, match="not compatible with compressed"):
                loaded = load(target, mmap_mode="r")
            np.testing.assert_array_equal(loaded["a"], value["a"])
    finally:
        codecs.REGISTERED.pop(name)
    with pytest.raises(ValueError, match="Compressor name should be a string"):
        register_compressor(1, Wrapper())
    with pytest.raises(ValueError, match="CompressorWrapper interface"):
        register_compressor("x", object())
    with pytest.raises(ValueError, match="file object interface"):
        register_compressor("x", CompressorWrapper(obj=object, prefix=b"p"))


class Trickle(io.RawIOBase):
    """A stream that hands out one byte per read."""

    def __init__(self, data):
        self.data = data

    def readable(self):
        return True

    def readinto(self, out):
        if not self.data or not len(out):
            return 0
        out[0] = self.data[0]
        self.data = self.data[1:]
        return 1


def test_streams_that_hand_out_a_byte_at_a_time():
    buffer = io.BytesIO()
    dump({"a": np.arange(100)}, buffer, compress=3)
    loaded = load(io.BufferedReader(Trickle(buffer.getvalue()), buffer_size=1))
    np.testing.assert_array_equal(loaded["a"], np.arange(100))


def test_a_parallel_config_does_not_leak_into_dumps(tmp_path, capsys):
    a = np.round(np.random.default_rng(0).standard_normal(5 * fmt.FRAME_CHUNK // 8), 1)
    with cyjob.parallel_config(backend="sequential", verbose=100, n_jobs=1):
        dump(a, tmp_path / "x.pkl", compress=("zstd", 1))
        np.testing.assert_array_equal(load(tmp_path / "x.pkl"), a)
    assert capsys.readouterr().err == "" and capsys.readouterr().out == ""


def test_dumps_from_inside_parallel_tasks(tmp_path):
    a = np.round(np.random.default_rng(0).standard_normal(4 * fmt.FRAME_CHUNK // 8), 1)

    def job(i):
        path = tmp_path / f"{i}.pkl"
        dump(a, path, compress=("zlib", 1) if i % 2 else 0)
        return np.array_equal(load(path), a)

    assert cyjob.Parallel(n_jobs=2, backend="threading")(
        cyjob.delayed(job)(i) for i in range(4)) == [True] * 4


@pytest.mark.parametrize("opener", ["bz2", "gzip", "lzma"])
def test_dump_into_a_compressing_file_object_loads_from_the_plain_file(tmp_path, opener):
    import bz2  # noqa: F401
    import gzip  # noqa: F401
    import lzma  # noqa: F401

    factory = {"bz2": "BZ2File", "gzip": "GzipFile", "lzma": "LZMAFile"}[opener]
    factory = getattr(sys.modules[opener], factory)
    path = tmp_path / "x.pkl"
    with factory(path, "wb") as f:
        dump({"a": np.arange(100.0)}, f)
    with factory(path, "rb") as f:
        np.testing.assert_array_equal(load(f)["a"], np.arange(100.0))
    # joblib's rule: a raw file's compressor is recognised by its magic number.
    np.testing.assert_array_equal(load(path)["a"], np.arange(100.0))
    with open(path, "rb") as f:
        np.testing.assert_array_equal(load(f)["a"], np.arange(100.0))


def test_load_right_after_dump_into_a_buffer():
    # joblib reads an exhausted in-memory buffer from its start: so do we.
    buffer = io.BytesIO()
    dump(np.arange(10), buffer)
    np.testing.assert_array_equal(load(buffer), np.arange(10))


def test_dump_keeps_a_replaced_file_s_mode_and_writes_through_symlinks(tmp_path):
    path = tmp_path / "x.pkl"
    dump(1, path)
    os.chmod(path, 0o640)
    dump(2, path)
    assert os.stat(path).st_mode & 0o777 == 0o640 and load(path) == 2
    link = tmp_path / "link.pkl"
    os.symlink(path, link)
    dump(3, link)
    assert os.path.islink(link) and load(path) == 3



def test_a_symlink_into_a_missing_directory_is_refused_naming_the_link(tmp_path):
    # dump writes through a symlink, so the directory that must exist is its
    # target's: the error named the temporary file it could not create there.
    link = tmp_path / "link.pkl"
    os.symlink(tmp_path / "missing" / "x.pkl", link)
    with pytest.raises(FileNotFoundError, match="does not exist") as info:
        dump(Unpicklable(), link)
    assert str(link) in str(info.value) and "cyjob-tmp" not in str(info.value)


def test_a_mapped_file_keeps_its_contents_when_dumped_over(tmp_path):
    # joblib rewrites the file in place: a reader's map of it changes under
    # it (or faults, if the new file is shorter).  A rename leaves the old
    # file whole for whoever still maps it.
    path = tmp_path / "x.pkl"
    dump(np.arange(100_000.0), path)
    mapped = load(path, mmap_mode="r")
    dump(np.zeros(10), path)
    assert mapped[99_999] == 99_999.0 and mapped.sum() == np.arange(100_000.0).sum()
    np.testing.assert_array_equal(load(path), np.zeros(10))


@pytest.mark.timeout(60)
def test_concurrent_dumps_and_loads_of_one_path_see_whole_files(tmp_path):
    import threading

    path = tmp_path / "shared.pkl"
    values = [np.full(300_000, k, dtype=np.int64) for k in range(4)]
    dump(values[0], path)
    errors = []
    stop = threading.Event()

    def writer(k):
        try:
            for _ in range(15):
                dump(values[k], path, compress=("zstd", 1) if k % 2 else 0)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    def reader():
        try:
            while not stop.is_set():
                got = load(path)
                assert got.shape == (300_000,) and (got == got[0]).all() and 0 <= got[0] < 4
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    writers = [threading.Thread(target=writer, args=(k,)) for k in range(4)]
    readers = [threading.Thread(target=reader) for _ in range(2)]
    for t in writers + readers:
        t.start()
    for t in writers:
        t.join(50)
    stop.set()
    for t in readers:
        t.join(10)
    assert not errors, errors
    assert sorted(os.listdir(tmp_path)) == ["shared.pkl"]
