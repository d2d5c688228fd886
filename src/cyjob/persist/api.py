"""``cyjob.dump`` and ``cyjob.load``: joblib's API over cyjob's file format."""

import errno
import io
import numbers
import os
import pickle
import sys
import warnings

import numpy as np

from cyjob.persist import format as _format
from cyjob.persist import joblib_format
from cyjob.persist.atomic import atomic_write, sweep_beside
from cyjob.persist.codecs import CODECS, EXTENSIONS, REGISTERED, method_names
from cyjob.persist.joblib_format import native_byte_order
from cyjob.persist.restricted import Policy, UntrustedTypeError

MMAP_MODES = (None, "r", "r+", "w+", "c")
_PREFIX_SIZE = 8
_NUMERIC = ("numpy._core.numeric", "numpy.core.numeric")


# -- dump -------------------------------------------------------------------------

def _compression(compress, filename):
    """(method, level) from dump's arguments, by joblib's rules; level 0 means
    no compression, None the method's default."""
    method = "zlib"
    explicit = isinstance(compress, tuple)
    if compress is True:
        level = None
    elif explicit:
        if len(compress) != 2:
            raise ValueError("Compress argument tuple should contain exactly 2 elements: "
                             f"(compress method, compress level), you passed {compress}")
        method, level = compress
    elif isinstance(compress, str):
        method, level, explicit = compress, None, True
    else:
        level = compress
    if level is False:
        level = 0
    elif isinstance(level, numbers.Integral) and not isinstance(level, bool):
        level = int(level)  # numpy's integers (np.bool_ is no Integral: still refused)
    if not isinstance(method, str) or method not in method_names():
        raise ValueError(f'Non valid compression method given: "{method}". Possible values '
                         f"are {method_names()}.")
    if filename is not None and not explicit:
        # joblib: the extension picks the method when compress names none.
        found = None
        for ext, name in EXTENSIONS.items():
            if filename.endswith(ext):
                found = name
        for name, wrapper in REGISTERED.items():
            ext = getattr(wrapper, "extension", "")
            if ext and filename.endswith(ext):
                found = name
        if found is not None:
            method = found
            if level == 0:
                level = None
    if method in REGISTERED or method not in CODECS:
        valid = range(10)
    else:
        valid = range(CODECS[method].levels.stop)
    if level is not None and (isinstance(level, bool) or not isinstance(level, int)
                              or level not in valid):
        raise ValueError(f'Non valid compress level given: "{level}". Possible values are '
                         f"{list(valid)}.")
    if level != 0 and method in CODECS and method not in REGISTERED:
        CODECS[method].require()
    return method, level


def _write(file, value, method, level):
    if level == 0:
        _format.write(file, value)
    elif method in REGISTERED:
        compressed = REGISTERED[method].compressor_file(file, compresslevel=level)
        try:
            _format.write(compressed, value)
        finally:
            compressed.close()
    else:
        codec = CODECS[method]
        _format.write(file, value, codec, codec.default_level if level is None else level)


def dump(value, filename, compress=0, protocol=None):
    """Persist an arbitrary Python object into one file.

    The object graph is pickled by the C pickler (protocol 5); numpy arrays
    and other PEP 574 buffers are written out of band, straight from their
    memory, aligned so that :func:`load` can memory-map them.  Every part of
    the file carries a checksum.  A path is written to a temporary file
    beside it and renamed into place: a process killed meanwhile leaves the
    old file, never a half-written one (and a temporary file, which a later
    dump into that directory removes once it is 10 s old and its writer is
    dead: see ``cyjob.persist.atomic.sweep_temps``).

    Parameters
    ----------
    value : any Python object
        The object to store to disk.
    filename : str, os.PathLike or file object
        The path of the file, or an open binary file object to write to.
        Without ``compress``, a path ending in ``.z``, ``.gz``, ``.bz2``,
        ``.lzma``, ``.xz``, ``.lz4`` or ``.zst`` picks that compressor.
    compress : bool, int from 0 to 9, str or (str, int), default=0
        0 or False: no compression.  True or an int: that level (True: the
        method's default) of zlib or of the method the extension picks.  A
        method name ("zlib", "gzip", "bz2", "lzma", "xz", "lz4", "zstd" or
        one added by :func:`register_compressor`), or ``(method, level)``;
        zstd takes levels 1-22, lz4 1-16 (3 and above is LZ4-HC).  Large
        data is compressed in independent chunks on worker threads.  "lz4"
        and "zstd" need ``pip install "cyjob[compress]"``.
    protocol : int, optional
        Accepted for joblib compatibility.  The file always holds a protocol
        5 pickle (out-of-band buffers need it).

    Returns
    -------
    filenames : list of str or None
        ``[filename]``, or None when ``filename`` is a file object (as joblib).

    See Also
    --------
    cyjob.load : the corresponding loader
    """
    if isinstance(filename, os.PathLike):
        filename = os.fspath(filename)
    if isinstance(filename, bytes):
        filename = os.fsdecode(filename)
    is_path = isinstance(filename, str)
    method, level = _compression(compress, filename if is_path else None)
    if protocol is not None and (isinstance(protocol, bool) or not isinstance(protocol, int)
                                 or protocol > pickle.HIGHEST_PROTOCOL):
        raise ValueError(f"protocol must be an int <= {pickle.HIGHEST_PROTOCOL} or None, "
                         f"got {protocol!r}")
    if not is_path and not hasattr(filename, "write"):
        raise ValueError("Second argument should be a filename or a file-like object, "
                         f"{filename} (type {type(filename)}) was given.")
    if isinstance(filename, io.TextIOBase):
        raise TypeError(f"dump: {filename!r} is a text-mode file: open it in binary mode "
                        "('wb')")
    if not is_path:
        _write(filename, value, method, level)
        return None
    if not filename:
        # (its directory would be the current one: the temporary file would be
        # written whole before the rename onto "" failed)
        raise FileNotFoundError(errno.ENOENT, "dump: filename is empty", filename)
    if os.path.isdir(filename):
        raise IsADirectoryError(f"dump: filename {filename!r} is a directory")
    if filename.endswith((os.sep, os.altsep or os.sep)):
        # (as open(filename, "wb") refuses it; the temporary file would be
        # made inside it, and its name would be the one in the error)
        raise IsADirectoryError(f"dump: filename {filename!r} ends in a path separator: "
                                "it names a directory, not a file")
    # The file is written where a symlink points (as open() would write):
    # that is the directory that must exist.
    target = os.path.realpath(filename) if os.path.islink(filename) else filename
    directory = os.path.dirname(os.path.abspath(target))
    if not os.path.isdir(directory):
        through = f" (a symlink to {target!r})" if target != filename else ""
        raise FileNotFoundError(f"dump: the directory of {filename!r}{through} does not "
                                "exist")
    # Before writing: the space that killed dumps hold comes back first.
    sweep_beside(filename)
    with atomic_write(filename) as file:
        _write(file, value, method, level)
    return [filename]


# -- load -------------------------------------------------------------------------

class _Unpickler(pickle.Unpickler):
    """The C unpickler, with numpy's out-of-band arrays rebuilt on cyjob's
    buffers (memory maps stay ``np.memmap``) and an optional policy."""

    def __init__(self, file, buffers, policy, native):
        super().__init__(file, buffers=buffers)
        self.policy = policy
        self.native = native

    def find_class(self, module, name):
        if name == "_frombuffer" and module in _NUMERIC:
            return self._frombuffer
        if self.policy is not None:
            self.policy.check(module, name)
        return super().find_class(module, name)

    def _frombuffer(self, buffer, dtype, shape, order):
        # An array that was read-only when dumped comes as a read-only view
        # of our buffer: joblib returns writable arrays, so take the buffer.
        if isinstance(buffer, memoryview) and isinstance(buffer.obj, np.ndarray):
            buffer = buffer.obj
        if isinstance(buffer, np.memmap) and not buffer.size:
            # (a view of an empty map would forget its file: see empty_memmap)
            return _format.empty_memmap(buffer.filename, buffer.mode, buffer.offset, dtype,
                                        shape, order)
        if isinstance(buffer, np.ndarray):
            array = buffer.view(dtype).reshape(shape, order=order)
        else:
            array = np.frombuffer(buffer, dtype=dtype).reshape(shape, order=order)
        if self.native:
            array = native_byte_order(array)
        return array


def _peek(file):
    """The first bytes of ``file``, and a file to read it all from."""
    peek = getattr(file, "peek", None)
    if peek is not None:
        try:
            head = peek(_PREFIX_SIZE)[:_PREFIX_SIZE]
        except (io.UnsupportedOperation, OSError, ValueError):
            head = b""
        if len(head) == _PREFIX_SIZE:
            return head, file
    head = b""
    while len(head) < _PREFIX_SIZE:  # a stream may hand out fewer bytes per read
        part = file.read(_PREFIX_SIZE - len(head))
        if not part:
            break
        head += part
    try:
        if not head and file.tell():
            # At the end of a seekable stream: start from its beginning, as
            # joblib does (dump(obj, buffer); load(buffer) works without a seek).
            file.seek(0)
            return _peek(file)
        file.seek(-len(head), io.SEEK_CUR)
        return head, file
    except (AttributeError, io.UnsupportedOperation, OSError, ValueError):
        return head, io.BufferedReader(_Prefixed(head, file))


class _Prefixed(io.RawIOBase):
    """Bytes already read from an unseekable stream, then the stream."""

    def __init__(self, head, file):
        self.head = head
        self.file = file

    def readable(self):
        return True

    def readinto(self, out):
        if self.head:
            n = min(len(out), len(self.head))
            out[:n] = self.head[:n]
            self.head = self.head[n:]
            return n
        data = self.file.read(len(out))
        out[:len(data)] = data
        return len(data)


def _describe(file, filename):
    if filename:
        return repr(filename)
    name = getattr(file, "name", None)
    return repr(name) if isinstance(name, str) and name else repr(file)


def _read(file, name, filename, mmap_mode, native, policy):
    """Load from ``file`` whatever format it holds; ``filename`` (a path,
    or "" for a file object) is where memory maps come from."""
    prefix, file = _peek(file)
    if prefix.startswith(_format.MAGIC):
        return _format.read(
            file, name, mmap_mode if filename else None, filename,
            lambda data, buffers: _Unpickler(data, buffers, policy, native),
            warn=lambda: _warn_compressed(mmap_mode, filename))
    for method, wrapper in REGISTERED.items():
        magic = getattr(wrapper, "prefix", b"")
        if magic and prefix.startswith(magic):
            _warn_compressed(mmap_mode, filename)
            inner = io.BufferedReader(wrapper.decompressor_file(file))
            return _read(inner, name, "", None, native, policy)
    kind = joblib_format.detect(prefix)
    if kind is None and prefix and len(prefix) < len(_format.MAGIC) \
            and _format.MAGIC.startswith(prefix):
        raise _format.CorruptFileError(f"{name} is truncated: it ends in the cyjob header")
    if kind is None:
        if not prefix:
            raise ValueError(f"{name} is neither a cyjob nor a joblib file: it is empty")
        # joblib with protocol=0 or 1 wrote a pickle with no magic number:
        # try it as one, but say what the file is not if it is not one.
        try:
            return joblib_format.read(file, name, filename, mmap_mode if filename else None,
                                      native, policy, "pickle")
        except (UntrustedTypeError, ImportError):
            raise
        except Exception as exc:
            raise ValueError(f"{name} is neither a cyjob nor a joblib file: it starts with "
                             f"{prefix!r} (read as a pickle: {exc})") from exc
    if kind not in ("pickle", "compat"):
        # A whole-file compressed stream: joblib's file, or any file (ours
        # too) written through a compressor's file object.
        _warn_compressed(mmap_mode, filename)
        try:
            return _read(joblib_format.decompressing_reader(file, kind), name, "", None,
                         native, policy)
        except joblib_format.STREAM_ERRORS as exc:
            if not joblib_format.is_stream_error(exc):
                raise
            raise _format.CorruptFileError(f"{name} is truncated or corrupt: {exc}") from exc
    return joblib_format.read(file, name, filename, mmap_mode if filename else None,
                              native, policy, kind)


def _warn_compressed(mmap_mode, filename):
    if mmap_mode is not None and filename:
        warnings.warn(f'mmap_mode "{mmap_mode}" is not compatible with compressed file '
                      f'{filename}. "{mmap_mode}" flag will be ignored.',
                      stacklevel=_stacklevel_outside_persist())


def _stacklevel_outside_persist():
    """The ``stacklevel`` that makes a warning issued by this function's
    caller point at the first frame outside ``cyjob.persist`` (load's
    caller): the depth at which a file is found compressed varies with its
    format and wrappers."""
    frame = sys._getframe(1)
    level = 1
    while frame is not None and frame.f_globals.get("__name__", "").startswith(
            "cyjob.persist"):
        frame = frame.f_back
        level += 1
    return level


def load(filename, mmap_mode=None, ensure_native_byte_order="auto", *, trusted=True,
         allowed=()):
    """Reconstruct a Python object from a file written by :func:`dump` or by
    ``joblib.dump`` (joblib 0.10 and later, any compressor; joblib need not
    be installed).

    Unpickling runs code named by the file: load untrusted files with
    ``trusted=False``.

    Parameters
    ----------
    filename : str, os.PathLike or file object
        The path of the file, or an open binary file object to read from.
    mmap_mode : {None, "r+", "r", "w+", "c"}, optional
        Memory-map the arrays of an uncompressed file instead of reading
        them, whatever their size, as ``np.load(..., mmap_mode=...)`` does
        ("r+": writes reach the file; "c": they stay in memory; "w+" means
        "r+").  A compressed file warns and is read into memory.  Mapped
        arrays are checked for truncation but their bytes are not hashed
        (that would read them all).
    ensure_native_byte_order : bool or "auto", default="auto"
        Convert arrays to the host's byte order (same values).  "auto": True
        unless ``mmap_mode`` is given.
    trusted : bool, default=True
        False refuses every class or function the file names except builtin
        containers and scalars, numpy arrays, dtypes and scalars, and those
        in ``allowed``: the error names it before any of its code runs.
    allowed : iterable of type, function or "module.qualname", optional
        What an untrusted load lets through besides those; "package.*" lets
        through every name of a package and its modules (e.g. "sklearn.*").
        None, as (), lets nothing more through.

    Returns
    -------
    result : any Python object
        The object stored in the file.

    Raises
    ------
    cyjob.persist.CorruptFileError
        The file is truncated or its contents do not match their checksums.
    cyjob.persist.UntrustedTypeError
        ``trusted=False`` and the file names a type not let through.

    See Also
    --------
    cyjob.dump : the function that writes such files
    """
    if mmap_mode not in MMAP_MODES:
        raise ValueError(f"mmap_mode must be one of {MMAP_MODES}, got {mmap_mode!r}")
    if ensure_native_byte_order == "auto":
        ensure_native_byte_order = mmap_mode is None
    if ensure_native_byte_order and mmap_mode is not None:
        raise ValueError(
            "Native byte ordering can only be enforced if 'mmap_mode' parameter is set to "
            f"None, but got 'mmap_mode={mmap_mode}' instead.")
    if not isinstance(trusted, bool):
        raise TypeError(f"trusted must be True or False, got {trusted!r}")
    if trusted and allowed:
        raise ValueError("allowed= lists what an untrusted load lets through: pass "
                         "trusted=False with it")
    if isinstance(filename, os.PathLike):
        filename = os.fspath(filename)
    if isinstance(filename, bytes):
        filename = os.fsdecode(filename)
    if isinstance(filename, io.TextIOBase):
        # (it would fail in the middle, on str where bytes are read)
        raise TypeError(f"load: {filename!r} is a text-mode file: open it in binary mode "
                        "('rb')")
    if hasattr(filename, "read"):
        name = _describe(filename, "")
        policy = None if trusted else Policy(allowed, name)
        if mmap_mode is not None:
            _warn_file_object(filename, mmap_mode)
        return _read(filename, name, "", None, bool(ensure_native_byte_order), policy)
    if not isinstance(filename, str):
        raise TypeError("load: filename must be a str, an os.PathLike or a binary file "
                        f"object, got {type(filename).__name__}")
    name = repr(filename)
    policy = None if trusted else Policy(allowed, name)
    with open(filename, "rb") as file:
        return _read(file, name, filename, mmap_mode, bool(ensure_native_byte_order),
                     policy)


def _warn_file_object(file, mmap_mode):
    # joblib's warnings, word for word: a file object is never memory-mapped.
    if isinstance(file, io.BytesIO):
        warnings.warn("In memory persistence is not compatible with mmap_mode "
                      f'"{mmap_mode}" flag passed. mmap_mode option will be ignored.',
                      stacklevel=3)
    elif not isinstance(getattr(file, "raw", file), io.FileIO):
        warnings.warn(f'"{file!r}" is not a raw file, mmap_mode "{mmap_mode}" flag will '
                      "be ignored.", stacklevel=3)
