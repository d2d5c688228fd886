"""Reading the files that ``joblib.dump`` writes, without joblib.

joblib 0.10 and later write one pickle stream (pure-Python pickler) in which
each numpy array is a ``joblib.numpy_pickle.NumpyArrayWrapper`` object whose
raw bytes follow it in the file (joblib 1.2+: after a padding byte and
padding to 16 bytes); the whole file may be compressed as one zlib, gzip,
bz2, lzma, xz or lz4 stream.  joblib 0.9 and earlier wrote each array in a
companion ``.npy`` (or zlib ``.z``) file beside the pickle.  Here the wrapper
classes resolve to readers of our own, so joblib need not be installed.
"""

import io
import lzma
import math
import os
import pickle
import struct
import sys
import warnings
import zlib

import numpy as np

from cyjob.persist.format import CorruptFileError
from cyjob.persist.restricted import UntrustedTypeError

#: joblib's magic numbers, by compressor.
COMPRESSED_PREFIXES = [
    (b"\x78", "zlib"), (b"\x1f\x8b", "gzip"), (b"BZ", "bz2"),
    (b"\xfd\x37\x7a\x58\x5a", "xz"), (b"\x5d\x00", "lzma"),
    (b"\x04\x22\x4d\x18", "lz4"),
]
#: joblib < 0.9.3 compressed the whole pickle as a "Z-file".
ZFILE_PREFIX = b"ZF"
_BUFFER_SIZE = 1 << 20
#: What a decompressing reader raises on a truncated or damaged stream (lz4
#: raises RuntimeError: see is_stream_error).
STREAM_ERRORS = (EOFError, zlib.error, OSError, lzma.LZMAError, RuntimeError)


def is_stream_error(exc):
    """True if ``exc`` (one of STREAM_ERRORS) says the stream is damaged."""
    if isinstance(exc, FileNotFoundError):
        return False
    return not isinstance(exc, RuntimeError) or "LZ4" in str(exc)


def detect(prefix):
    """joblib's compressor for a file starting with ``prefix``, "compat" for
    a joblib < 0.10 Z-file, "pickle" for a plain pickle stream, or None."""
    if prefix.startswith(ZFILE_PREFIX):
        return "compat"
    for magic, method in COMPRESSED_PREFIXES:
        if prefix.startswith(magic):
            return method
    if prefix[:1] == b"\x80":
        return "pickle"  # joblib's pickles start with PROTO (protocol 2 and later)
    return None


class _ZlibReader(io.RawIOBase):
    """A zlib (or, with wbits=31, gzip) stream, decompressed as it is read."""

    def __init__(self, file, wbits):
        self.file = file
        self.inflate = zlib.decompressobj(wbits)
        self.pending = b""

    def readable(self):
        return True

    def readinto(self, out):
        while not self.pending:
            if self.inflate.eof:
                return 0
            raw = self.inflate.unconsumed_tail or self.file.read(_BUFFER_SIZE)
            if not raw:
                raise EOFError("compressed file ended before the end-of-stream marker")
            self.pending = self.inflate.decompress(raw, _BUFFER_SIZE)
        n = min(len(out), len(self.pending))
        out[:n] = self.pending[:n]
        self.pending = self.pending[n:]
        return n


def decompressing_reader(file, method):
    """A buffered reader of the decompressed contents of ``file``."""
    if method == "zlib":
        raw = _ZlibReader(file, zlib.MAX_WBITS)
    elif method == "gzip":
        raw = _ZlibReader(file, 31)
    elif method == "bz2":
        import bz2

        raw = bz2.BZ2File(file, "rb")
    elif method in ("lzma", "xz"):
        raw = lzma.LZMAFile(file, "rb")
    else:
        from cyjob.persist.codecs import CODECS

        CODECS["lz4"].require()
        import lz4.frame

        raw = lz4.frame.LZ4FrameFile(file, "rb")
    return io.BufferedReader(raw, buffer_size=_BUFFER_SIZE)


# -- byte order ---------------------------------------------------------------

def _byte_order_mismatch(dtype):
    other = ">" if sys.byteorder == "little" else "<"
    if dtype.byteorder == other:
        return True
    return bool(dtype.byteorder == "|" and dtype.fields
                and all(f[0].byteorder == other for f in dtype.fields.values()))


def native_byte_order(array):
    """``array`` in the host's byte order, same values (joblib's
    ``ensure_native_byte_order``)."""
    if _byte_order_mismatch(array.dtype):
        array = array.byteswap().view(array.dtype.newbyteorder("="))
    return array


# -- the wrappers -------------------------------------------------------------

def _as_subclass(array, subclass):
    if subclass in (np.ndarray, np.memmap) or not isinstance(subclass, type) \
            or not issubclass(subclass, np.ndarray) or isinstance(array, np.memmap):
        return array
    return array.view(subclass)


class NumpyArrayWrapper:
    """Stands for ``joblib.numpy_pickle.NumpyArrayWrapper``: the array's
    metadata; its bytes follow it in the file."""

    def read(self, unpickler):
        shape = tuple(int(n) for n in self.shape)
        dtype = self.dtype
        order = self.order
        alignment = getattr(self, "numpy_array_alignment_bytes", None)
        fh = unpickler.file_handle
        if dtype.hasobject:
            # An object array is a nested pickle stream, read under the same
            # rules (find_class) as the outer one.
            inner = pickle._Unpickler(fh)
            inner.find_class = unpickler.find_class
            array = inner.load()
        elif unpickler.mmap_mode is not None and getattr(self, "allow_mmap", False):
            return self._read_mmap(unpickler, shape, dtype, order, alignment)
        else:
            if alignment is not None:
                pad = _read(fh, 1, unpickler)[0]
                if pad:
                    _read(fh, pad, unpickler)
            count = 1
            for n in shape:
                count *= n
            array = np.empty(count, dtype=dtype)
            _read_into(fh, memoryview(array.view(np.uint8)), unpickler)
            if order == "F":
                array = array.reshape(shape[::-1]).transpose()
            else:
                array = array.reshape(shape)
        if unpickler.ensure_native_byte_order:
            array = native_byte_order(array)
        return _as_subclass(array, self.subclass)

    def _read_mmap(self, unpickler, shape, dtype, order, alignment):
        fh = unpickler.file_handle
        start = fh.tell()
        offset = start
        if alignment is not None:
            offset += _read(fh, 1, unpickler)[0] + 1
        mode = "r+" if unpickler.mmap_mode == "w+" else unpickler.mmap_mode
        if offset + math.prod(shape) * dtype.itemsize > os.fstat(fh.fileno()).st_size:
            # (np.memmap would say only "mmap length is greater than file size")
            raise CorruptFileError(f"{unpickler.name} is truncated: it ends in array data")
        array = np.memmap(unpickler.filename, dtype=dtype, shape=shape, order=order,
                          mode=mode, offset=offset)
        fh.seek(offset + array.nbytes)
        if alignment is None and start % 16:
            warnings.warn(
                f"The memmapped array {array} loaded from the file {fh.name} is not "
                "byte aligned. This may cause segmentation faults if this memmapped "
                "array is used in some libraries like BLAS or PyTorch. To get rid of "
                "this warning, regenerate your pickle file with joblib >= 1.2.0. See "
                "https://github.com/joblib/joblib/issues/563 for more details",
                stacklevel=2)
        return array


class NDArrayWrapper:
    """Stands for joblib < 0.10's ``NDArrayWrapper``: the array is in a
    companion ``.npy`` file."""

    def read(self, unpickler):
        unpickler.compat_mode = True
        path = os.path.join(unpickler.dirname, self.filename)
        kwargs = {}
        if getattr(self, "allow_mmap", True):
            kwargs["mmap_mode"] = unpickler.mmap_mode
        # The companion file may hold an object array (a pickle): only a
        # trusted load reads it.
        array = np.load(path, allow_pickle=unpickler.policy is None, **kwargs)
        return _as_subclass(native_byte_order(array), self.subclass)


class ZNDArrayWrapper(NDArrayWrapper):
    """Stands for joblib < 0.10's ``ZNDArrayWrapper``: the array's bytes are
    in a companion Z-file."""

    def read(self, unpickler):
        unpickler.compat_mode = True
        path = os.path.join(unpickler.dirname, self.filename)
        with open(path, "rb") as f:
            data = read_zfile(f, path)
        array = unpickler.find_class("numpy.core.multiarray", "_reconstruct")(
            *self.init_args)
        array.__setstate__(self.state + (data,))
        return array


def read_zfile(file, name):
    """The contents of a joblib < 0.9.3 Z-file."""
    header = file.read(len(ZFILE_PREFIX) + 19)
    try:
        length = int(header[len(ZFILE_PREFIX):], 16)
    except ValueError:
        raise CorruptFileError(f"{name!r} is corrupt: bad Z-file header") from None
    rest = file.read()
    if rest[:1] == b" ":  # joblib <= 0.8.4 wrote a one byte wider header
        rest = rest[1:]
    try:
        data = zlib.decompress(rest, 15, max(length, 1))
    except zlib.error as exc:
        raise CorruptFileError(f"{name!r} is corrupt: {exc}") from None
    if len(data) != length:
        raise CorruptFileError(f"{name!r} is corrupt: {len(data)} bytes decompressed, "
                               f"{length} expected")
    return data


def _read(fh, n, unpickler):
    data = fh.read(n)
    if len(data) != n:
        raise CorruptFileError(f"{unpickler.name} is truncated: it ends in array data")
    return data


def _read_into(fh, view, unpickler):
    while view.nbytes:
        n = fh.readinto(view[:_BUFFER_SIZE * 64])
        if not n:
            raise CorruptFileError(f"{unpickler.name} is truncated: it ends in array "
                                   "data")
        view = view[n:]


_WRAPPERS = {"NumpyArrayWrapper": NumpyArrayWrapper, "NDArrayWrapper": NDArrayWrapper,
             "ZNDArrayWrapper": ZNDArrayWrapper}


class _Opcodes(dict):
    """The pure-Python unpickler's opcode table: a byte that is no opcode
    raises UnpicklingError (as the C unpickler does), not a bare KeyError."""

    def __missing__(self, code):
        raise pickle.UnpicklingError(f"invalid load key, {bytes([code])!r}")


class JoblibUnpickler(pickle._Unpickler):
    """Reads joblib's pickle stream: wrappers become arrays as they are built.

    (The pure-Python unpickler, as joblib's own: array bytes sit in the
    stream right after each wrapper, and only it lets us read them there.)
    """

    dispatch = _Opcodes(pickle._Unpickler.dispatch)

    def __init__(self, file, name, filename="", mmap_mode=None,
                 ensure_native_byte_order=True, policy=None):
        super().__init__(file)
        self.file_handle = file
        self.name = name
        self.filename = filename
        self.dirname = os.path.dirname(filename)
        self.mmap_mode = mmap_mode
        self.ensure_native_byte_order = ensure_native_byte_order
        self.policy = policy
        self.compat_mode = False

    def find_class(self, module, name):
        if module.split(".")[0] == "joblib" and name in _WRAPPERS:
            return _WRAPPERS[name]
        if self.policy is not None:
            self.policy.check(module, name)
        return super().find_class(module, name)

    def load_build(self):
        super().load_build()
        if isinstance(self.stack[-1], (NumpyArrayWrapper, NDArrayWrapper)):
            self.stack[-1] = self.stack[-1].read(self)

    dispatch[pickle.BUILD[0]] = load_build


def _deprecated(filename):
    warnings.warn(f"The file '{filename}' has been generated with a joblib version less "
                  "than 0.10. Please regenerate this pickle file.", DeprecationWarning,
                  stacklevel=4)


def read(file, name, filename="", mmap_mode=None, ensure_native_byte_order=True,
         policy=None, method="pickle"):
    """Load a joblib pickle (``method="pickle"``) or Z-file (``"compat"``)
    from ``file``, positioned at its start."""
    if method == "compat":
        _deprecated(filename)
        file = io.BytesIO(read_zfile(file, filename))
        mmap_mode = None
    unpickler = JoblibUnpickler(file, name, filename, mmap_mode, ensure_native_byte_order,
                                policy)
    try:
        obj = unpickler.load()
    except UnicodeDecodeError as exc:
        raise ValueError("You may be trying to read with python 3 a joblib pickle "
                         "generated with python 2. This feature is not supported by "
                         "joblib.") from exc
    except STREAM_ERRORS as exc:
        if not is_stream_error(exc):
            raise
        raise CorruptFileError(f"{name} is truncated or corrupt: {exc}") from exc
    except UntrustedTypeError:
        raise
    except (struct.error, pickle.UnpicklingError) as exc:
        # What the unpickler raises on a stream cut short (a frame or an
        # argument shorter than its length says) or holding a byte that is
        # no opcode: a joblib file carries no checksum to say it first.
        raise CorruptFileError(f"{name} is truncated or corrupt: {exc}") from exc
    if unpickler.compat_mode and method != "compat":
        _deprecated(filename)
    return obj
