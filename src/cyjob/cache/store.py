"""Where cyjob.Memory keeps its entries: the local store backend.

Layout under ``<location>/cyjob/``::

    <module path>/<function name>/
        func_code.json          what the current version was made from
        <version>/              one folder per code version of the function
            <argument hash>     one entry per call (format below)
        .lock                       single-flight locks, one byte per key (Linux)

An entry is one file, written to a temporary name and renamed into place
(``os.replace`` is atomic), so a reader sees a whole entry or none::

    header   magic "CYJE", format version, flags, buffer count, lengths,
             creation time, duration, xxh3_64 of the pickle and metadata
             (flag 1: the buffers were mapped "r+", their checksums are stale)
    table    per out-of-band buffer: offset, length, xxh3_64
    pickle   the result, pickled with protocol 5; numpy arrays go out of
             band (their memory is written as is, aligned to 64 bytes)
    meta     a small pickle: the call's argument reprs (read only on demand)
    buffers  the arrays' raw memory

A hit reads the file with one ``read``; the arrays come back as views of
that buffer (no copy) or, with ``mmap_mode``, as ``np.memmap`` views of the
file.  Checksums catch torn or corrupted files (a mapped array's memory is
checked for length only: reading it all would defeat mapping).
"""

import io
import os
import pickle
import shutil
import struct
import sys
import threading
import time
import warnings

import xxhash

from cyjob.cache.locks import OFD_LOCKS, UNWRITABLE, ByteLock, LockFile, key_lock
# Not the package (its dump/load import numpy): crash-safe writes only.
from cyjob.persist.atomic import atomic_write, is_stale_temp, publish

__all__ = ["StoreBackendBase", "LocalStoreBackend", "CorruptEntry", "register_store_backend",
           "bytes_from_limit"]

_MAGIC = b"CYJE"
_FORMAT = 1
_DUMP_MAGIC = b"\x89CYJOB"  # cyjob.dump's files (compressed entries)
_DUMPED_ENTRY = "cyjob.Memory entry 1"
_HEADER = struct.Struct("<4sBBHIQQddQ")  # magic ver flags pad nbuf plen mlen time dur sum
_ROW = struct.Struct("<QQQ")  # offset, length, xxh3_64
# Header flag: the buffers were mapped writable ("r+"), so they may have
# changed in place and their checksums no longer say anything.
_WRITABLE_MAPPED = 1
_FLAGS_OFFSET = 5  # of the flags byte in _HEADER
_ALIGN = 64
# Entries up to this size are read into bytes (their arrays copied out, a
# few KB); larger ones into one writable buffer the arrays are views of.
_SMALL_ENTRY = 1 << 16
# Guards the stores' running size counts (one lock for all: held for an add).
_SIZE_LOCK = threading.Lock()
_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_O_READ = os.O_RDONLY | _O_CLOEXEC


class CorruptEntry(Exception):
    """An entry that exists but cannot be read back whole."""


def _rebuild_array(buf, dtype, shape, order):
    np = sys.modules["numpy"]
    if not isinstance(buf, np.ndarray):
        buf = np.frombuffer(buf, dtype=np.uint8)
    if isinstance(buf, np.memmap) and not buf.size:
        # (a view of an empty map would forget its file: see empty_memmap)
        from cyjob.persist.format import empty_memmap

        return empty_memmap(buf.filename, buf.mode, buf.offset, dtype, shape, order)
    if not dtype.itemsize:  # no bytes to view as items of no bytes (numpy refuses)
        return np.empty(shape, dtype, order=order)
    # .view keeps np.memmap (mmap_mode) a memmap, as joblib returns.
    return buf.view(dtype).reshape(shape, order=order)


class _EntryPickler(pickle.Pickler):
    """Protocol 5; plain ndarrays/memmaps go out of band with their layout."""

    def reducer_override(self, obj):
        np = sys.modules.get("numpy")
        if np is None or type(obj) not in (np.ndarray, np.memmap) or obj.dtype.hasobject:
            return NotImplemented
        if obj.flags.c_contiguous:
            order, data = "C", obj
        elif obj.flags.f_contiguous:
            order, data = "F", obj
        else:
            order, data = "C", np.ascontiguousarray(obj)
        try:
            buffer = pickle.PickleBuffer(data)
        except ValueError:
            # numpy exports no buffer of datetime64/timedelta64 items: their
            # raw bytes, in the same order (_rebuild_array views them back).
            buffer = pickle.PickleBuffer(data.ravel(order=order).view(np.uint8))
        return _rebuild_array, (buffer, obj.dtype, obj.shape, order)


# Values that hold no other object (so no numpy array).
_ATOMS = frozenset({int, float, complex, str, bytes, bool, type(None)})


def encode_entry(value, meta, duration):
    """``(head, buffers)``: the header, table, pickle and metadata as one
    bytes object, and the out-of-band buffers that follow it."""
    kind = type(value)
    if kind in _ATOMS or (kind in (tuple, list) and len(value) <= 8
                          and _ATOMS.issuperset(map(type, value))):
        # No array can hide in it: the C pickler alone, no table (a Pickler
        # subclass with a reducer_override costs ~1 us more per miss).
        payload = pickle.dumps(value, protocol=5)
        meta_bytes = pickle.dumps(meta, protocol=5)
        body = payload + meta_bytes
        return _HEADER.pack(_MAGIC, _FORMAT, 0, 0, 0, len(payload), len(meta_bytes),
                            time.time(), duration, xxhash.xxh3_64_intdigest(body)) + body, ()
    buffers = []
    out = io.BytesIO()
    _EntryPickler(out, protocol=5,
                  buffer_callback=lambda b: buffers.append(b.raw())).dump(value)
    payload = out.getbuffer()
    meta_bytes = pickle.dumps(meta, protocol=5)
    offset = _HEADER.size + _ROW.size * len(buffers) + len(payload) + len(meta_bytes)
    rows = []
    for buf in buffers:
        offset = -(-offset // _ALIGN) * _ALIGN
        rows.append(_ROW.pack(offset, buf.nbytes, xxhash.xxh3_64_intdigest(buf)))
        offset += buf.nbytes
    state = xxhash.xxh3_64(payload)
    state.update(meta_bytes)
    header = _HEADER.pack(_MAGIC, _FORMAT, 0, 0, len(buffers), len(payload),
                          len(meta_bytes), time.time(), duration, state.intdigest())
    return b"".join([header, *rows, payload, meta_bytes]), buffers


def write_entry(path, value, meta, duration, compress=None):
    """Write an entry crash-safely (a temporary file renamed into place, as
    cyjob.persist's atomic write).  Returns the entry's size in bytes.

    A compressed entry is a ``cyjob.dump`` file (its codecs: zlib ... zstd,
    chunked on threads); a plain one is this module's format, which a hit
    reads several times faster than ``cyjob.load`` reads a tiny file.
    """
    if compress:
        from cyjob.persist import dump

        dump((_DUMPED_ENTRY, value, meta, time.time(), duration), path, compress=compress)
        return os.stat(path).st_size
    head, buffers = encode_entry(value, meta, duration)
    if not buffers:
        publish(path, head)  # the common tiny entry: a handful of syscalls
        return len(head)
    with atomic_write(path) as f:
        _write_all(f.fileno(), head)
        pos = len(head)
        for buf in buffers:
            pad = -pos % _ALIGN
            if pad:
                _write_all(f.fileno(), b"\0" * pad)
            _write_all(f.fileno(), buf)
            pos += pad + buf.nbytes
    return pos


def _write_all(fd, buf):
    view = memoryview(buf).cast("B")
    while view:
        n = os.write(fd, view)  # may write less than asked
        view = view[n:]


def _read_dumped(data, path, with_meta):
    """A compressed entry: a cyjob.dump file of (mark, value, meta, time, duration)."""
    from cyjob.persist import load

    try:
        mark, value, meta, created, duration = load(io.BytesIO(data))
        if mark != _DUMPED_ENTRY:
            raise ValueError("not a cache entry")
    except Exception as exc:
        raise CorruptEntry("cannot load: %r" % (exc,)) from exc
    if not with_meta:
        return value
    meta.update(duration=duration, time=created)
    return value, meta


def _header(data, size, path):
    if size < _HEADER.size:
        raise CorruptEntry("truncated header")
    (magic, fmt, flag, _, nbuf, plen, mlen, created, duration,
     checksum) = _HEADER.unpack_from(data)
    if magic != _MAGIC or fmt != _FORMAT:
        raise CorruptEntry("not a cyjob cache entry (format %r)" % (fmt,))
    return flag, nbuf, plen, mlen, created, duration, checksum


def read_entry(path, mmap_mode=None, with_meta=False, touch=False):
    """The value stored at ``path`` (and its metadata dict if ``with_meta``).

    Raises FileNotFoundError for a missing entry and CorruptEntry for one
    that cannot be read back whole.
    """
    fd = os.open(path, _O_READ)  # os-level: a hit is a handful of syscalls
    try:
        st = os.fstat(fd)
        size = st.st_size
        if touch and time.time() - st.st_mtime > 1.0:
            # LRU: a hit makes the entry recent; at most once a second, so a
            # hot key costs no write on most hits.
            try:
                os.utime(fd)
            except OSError:
                pass
        if mmap_mode is None:
            if size <= _SMALL_ENTRY:
                data = os.read(fd, size)  # bytes: one read, no zero-filled buffer
                if len(data) != size:
                    raise CorruptEntry("short read")
            else:
                data = bytearray(size)  # arrays become views of it: writable
                _read_into(fd, data)
        else:
            data = os.pread(fd, min(size, 1 << 16), 0)
    finally:
        os.close(fd)
    if data[:len(_DUMP_MAGIC)] == _DUMP_MAGIC:
        if mmap_mode is not None:
            with open(path, "rb") as f:
                data = f.read()
        return _read_dumped(data, path, with_meta)
    view = memoryview(data)
    flag, nbuf, plen, mlen, created, duration, checksum = _header(view, len(view), path)
    start = _HEADER.size + _ROW.size * nbuf
    end = start + plen + mlen
    if end > len(view) and mmap_mode is not None:
        with open(path, "rb") as f:
            view = memoryview(f.read(end))
    if end > len(view):
        raise CorruptEntry("truncated (%d of %d bytes)" % (size, end))
    state = xxhash.xxh3_64(view[start:end])
    if state.intdigest() != checksum:
        raise CorruptEntry("checksum mismatch")
    if nbuf and mmap_mode in ("r+", "w+") and not flag & _WRITABLE_MAPPED:
        # Writes through the map reach the file, behind the checksums:
        # later plain reads must take the bytes as they are, as joblib's do.
        _mark_writable_mapped(path, flag)
    buffers = []
    for i in range(nbuf):
        offset, length, buf_sum = _ROW.unpack_from(view, _HEADER.size + _ROW.size * i)
        if offset + length > size:
            raise CorruptEntry("truncated buffer %d" % i)
        if mmap_mode is None:
            buf = view[offset:offset + length]
            if (not flag & _WRITABLE_MAPPED
                    and xxhash.xxh3_64_intdigest(buf) != buf_sum):
                raise CorruptEntry("checksum mismatch in buffer %d" % i)
            if buf.readonly:  # a small entry read as bytes: the caller's arrays are writable
                buf = bytearray(buf)
        else:
            buf = _map(path, offset, length, mmap_mode)
        buffers.append(buf)
    payload = view[start:start + plen]
    try:
        value = pickle.loads(payload, buffers=buffers)
    except Exception as exc:
        raise CorruptEntry("cannot unpickle: %r" % (exc,)) from exc
    if not with_meta:
        return value
    meta = pickle.loads(view[start + plen:end])
    meta.update(duration=duration, time=created)
    return value, meta


def _mark_writable_mapped(path, flag):
    fd = os.open(path, os.O_WRONLY | _O_CLOEXEC)
    try:
        os.pwrite(fd, bytes([flag | _WRITABLE_MAPPED]), _FLAGS_OFFSET)
    finally:
        os.close(fd)


def _read_into(fd, data):
    view = memoryview(data)
    done = 0
    while done < len(view):
        n = os.readv(fd, [view[done:]])  # one call unless > 2 GiB
        if n == 0:
            raise CorruptEntry("short read")
        done += n


def read_meta(path):
    """The metadata dict of the entry at ``path`` (no value loaded)."""
    with open(path, "rb") as f:
        head = f.read(_HEADER.size)
        if head[:len(_DUMP_MAGIC)] == _DUMP_MAGIC:
            return _read_dumped(head + f.read(), path, True)[1]
        flag, nbuf, plen, mlen, created, duration, checksum = _header(head, len(head), path)
        f.seek(_HEADER.size + _ROW.size * nbuf + plen)
        raw = f.read(mlen)
    if len(raw) != mlen:
        raise CorruptEntry("truncated metadata")
    try:
        meta = pickle.loads(raw)
    except Exception as exc:
        raise CorruptEntry("cannot unpickle metadata: %r" % (exc,)) from exc
    meta.update(duration=duration, time=created)
    return meta


def _map(path, offset, length, mmap_mode):
    np = sys.modules.get("numpy")
    if np is None:
        import numpy as np
    mode = "r+" if mmap_mode == "w+" else mmap_mode  # w+ would truncate the file
    if length == 0:  # (np.memmap cannot map zero bytes)
        from cyjob.persist.format import empty_memmap

        return empty_memmap(path, mode, offset)
    return np.memmap(path, dtype=np.uint8, mode=mode, offset=offset, shape=(length,))


def bytes_from_limit(limit, name="bytes_limit"):
    """An int number of bytes from an int or a string like '10G', '500M'."""
    if limit is None:
        return None
    if isinstance(limit, bool):
        raise TypeError("%s must be an int, a str like '1G' or None, got %r" % (name, limit))
    if isinstance(limit, int):
        if limit < 0:
            raise ValueError("%s must be >= 0, got %r" % (name, limit))
        return limit
    if isinstance(limit, str):
        units = {"K": 1024, "M": 1024 ** 2, "G": 1024 ** 3, "T": 1024 ** 4}
        try:
            # int() refuses 'nan' and 'inf' (ValueError, OverflowError).
            size = int(units[limit[-1].upper()] * float(limit[:-1]))
        except (KeyError, ValueError, IndexError, OverflowError) as exc:
            raise ValueError(
                "Invalid literal for size give: %s (type %s) should be alike "
                "'10G', '500M', '50K'." % (limit, type(limit))) from exc
        if size < 0:  # '-1G': refused here, as -1 is, not at the first write
            raise ValueError("%s must be >= 0, got %r" % (name, limit))
        return size
    raise TypeError("%s must be an int, a str like '1G' or None, got %r" % (name, limit))


class StoreBackendBase:
    """What a store backend offers cyjob.Memory.

    Subclass it (usually ``LocalStoreBackend``) and register the class with
    ``cyjob.register_store_backend(name, cls)``; ``Memory(location,
    backend=name)`` then builds ``cls()`` and calls
    ``configure(location, verbose, backend_options)``.

    An entry is named by ``(func_id, version, args_id)``.  ``read`` returns
    the value (``(value, metadata)`` with ``with_meta``) and raises
    FileNotFoundError or KeyError for a missing entry and CorruptEntry for
    one it cannot return whole; ``write`` returns False when it could not
    store; ``lock`` returns an object with ``acquire()``, ``release()`` and
    ``usable`` that excludes other computers of the same key.
    """

    location = None

    def configure(self, location, verbose=0, backend_options=None):
        raise NotImplementedError

    def entry_path(self, func_id, version, args_id):
        raise NotImplementedError

    def read(self, func_id, version, args_id, mmap_mode=None, with_meta=False):
        raise NotImplementedError

    def write(self, func_id, version, args_id, value, meta, duration):
        raise NotImplementedError

    def lock(self, func_id, version, args_id):
        raise NotImplementedError

    def clear_item(self, func_id, version, args_id):
        raise NotImplementedError

    def clear_path(self, func_id):
        raise NotImplementedError

    def clear(self):
        raise NotImplementedError

    def enforce_store_limits(self, bytes_limit=None, items_limit=None, age_limit=None):
        raise NotImplementedError


class LocalStoreBackend(StoreBackendBase):
    """Entries as files in a local folder (see the module docstring)."""

    # The open lock file is a slot, out of vars(): a store pickles, compares
    # and hashes by its settings (joblib's tests compare vars() after a
    # pickle round trip), and descriptors mean nothing in another process.
    __slots__ = ("_lock_file",)

    def __init__(self):
        self.location = None
        self.compress = None
        self.verbose = 0
        self.bytes_limit = None
        self._written_since_scan = None  # bytes, None until the first scan
        self._size_at_scan = 0
        self._unwritable_warned = False
        self._lock_file = None  # the single-flight lock file, kept open (Linux)

    def __getstate__(self):
        return self.__dict__  # (not the slot)

    def configure(self, location, verbose=0, backend_options=None):
        options = dict(backend_options or {})
        self.location = os.fspath(location)
        self._lock_file = None  # (of the old location, if any)
        self.verbose = verbose
        self.compress = _compress_spec(options.get("compress", False))
        self.bytes_limit = bytes_from_limit(options.get("bytes_limit"))
        # As joblib: the folder exists from the start, and git ignores it.
        try:
            os.makedirs(self.location, exist_ok=True)
            gitignore = os.path.join(os.path.dirname(self.location), ".gitignore")
            if not os.path.exists(gitignore):
                with open(gitignore, "w") as f:
                    f.write("# Created by cyjob automatically.\n*\n")
        except OSError:
            pass  # a read-only place: reads still work, writes warn once

    # -- entries ------------------------------------------------------------
    def func_dir(self, func_id):
        return os.path.join(self.location, func_id)

    def entry_path(self, func_id, version, args_id):
        return os.path.join(self.location, func_id, version, args_id)

    def read(self, func_id, version, args_id, mmap_mode=None, with_meta=False):
        path = self.entry_path(func_id, version, args_id)
        return read_entry(path, mmap_mode=None if self.compress else mmap_mode,
                          with_meta=with_meta, touch=True)

    def read_meta(self, func_id, version, args_id):
        return read_meta(self.entry_path(func_id, version, args_id))

    def contains(self, func_id, version, args_id):
        return os.path.exists(self.entry_path(func_id, version, args_id))

    def write(self, func_id, version, args_id, value, meta, duration):
        """Store an entry; False (and one warning per store) if the folder
        cannot take it (read-only, full, no permission)."""
        return self.write_at(self.entry_path(func_id, version, args_id), value, meta, duration)

    def write_at(self, path, value, meta, duration):
        """``write`` given the entry's path (the caller has it at hand)."""
        try:
            try:
                size = write_entry(path, value, meta, duration, self.compress)
            except FileNotFoundError:
                os.makedirs(os.path.dirname(path), exist_ok=True)
                size = write_entry(path, value, meta, duration, self.compress)
        except OSError as exc:
            if exc.errno not in UNWRITABLE:
                raise
            self.warn_unwritable(exc)
            return False
        if self.bytes_limit is not None:
            self._after_write(size)
        return True

    def warn_unwritable(self, exc):
        if not self._unwritable_warned:
            self._unwritable_warned = True
            warnings.warn(
                "cyjob.Memory cannot write to its cache folder %s (%s): results "
                "are computed and returned but not stored." % (self.location, exc),
                stacklevel=5)

    def lock(self, func_id, version, args_id):
        return self.lock_at(self.entry_path(func_id, version, args_id))

    def lock_at(self, path):
        """The single-flight lock of the entry at ``path``."""
        lock_file = getattr(self, "_lock_file", None)
        if lock_file is not None:
            return ByteLock(lock_file, path)
        if OFD_LOCKS:
            lock_file = self._lock_file = LockFile(self.location + os.sep + ".lock")
        return key_lock(self.location, path, lock_file)

    def clear_item(self, func_id, version, args_id):
        try:
            os.unlink(self.entry_path(func_id, version, args_id))
        except OSError:
            pass

    def clear_path(self, func_id):
        shutil.rmtree(self.func_dir(func_id), ignore_errors=True)

    def clear(self):
        if self.location and os.path.isdir(self.location):
            for name in os.listdir(self.location):
                if name == ".lock":  # held by computations in flight
                    continue
                path = os.path.join(self.location, name)
                if os.path.isdir(path):
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    try:
                        os.unlink(path)
                    except OSError:
                        pass
        with _SIZE_LOCK:
            self._written_since_scan = None

    # -- function versions ----------------------------------------------------
    def read_func_code(self, func_id):
        import json

        try:
            with open(os.path.join(self.func_dir(func_id), "func_code.json")) as f:
                return json.load(f)
        except (OSError, ValueError):
            return None

    def write_func_code(self, func_id, info, keep_version):
        """Record the function's current version and drop the entries of
        the others (as joblib wipes a changed function's cache)."""
        import json

        fdir = self.func_dir(func_id)
        try:
            os.makedirs(fdir, exist_ok=True)
            publish(os.path.join(fdir, "func_code.json"), json.dumps(info).encode())
        except OSError as exc:
            if exc.errno not in UNWRITABLE:
                raise
            return
        for name in os.listdir(fdir):
            path = os.path.join(fdir, name)
            if name != keep_version and os.path.isdir(path):
                shutil.rmtree(path, ignore_errors=True)

    # -- size bound -------------------------------------------------------------
    def _after_write(self, size):
        with _SIZE_LOCK:
            if self._written_since_scan is None:
                self._size_at_scan = sum(e[2] for e in self._entries())
                self._written_since_scan = 0
            else:
                self._written_since_scan += size
            over = self._size_at_scan + self._written_since_scan > self.bytes_limit
        if over:
            self.enforce_store_limits(self.bytes_limit)

    def remove_dead_temps(self):
        """Remove the temporary files of writers that died mid-write (any
        scan of the entries does it too)."""
        self._entries()

    def _entries(self):
        """(mtime, path, size) of every entry; removes stale temp files."""
        out = []
        if not self.location or not os.path.isdir(self.location):
            return out
        now = time.time()
        for root, _dirs, files in os.walk(self.location):
            for name in files:
                path = os.path.join(root, name)
                if name.endswith((".lock", ".json")):
                    continue
                try:
                    st = os.stat(path)
                except OSError:
                    continue
                if name.startswith("."):  # temporary files; the dead writers' go
                    if is_stale_temp(name, st.st_mtime, now):
                        _unlink(path)
                    continue
                out.append((st.st_mtime, path, st.st_size))
        return out

    def enforce_store_limits(self, bytes_limit=None, items_limit=None, age_limit=None):
        """Drop least recently used entries until the store fits the limits."""
        bytes_limit = bytes_from_limit(bytes_limit)
        entries = sorted(self._entries())  # oldest first
        now = time.time()
        keep = []
        if age_limit is not None:
            max_age = age_limit.total_seconds()
            if max_age < 0:
                raise ValueError("age_limit has to be a positive timedelta")
            for entry in entries:
                if now - entry[0] > max_age:
                    _unlink(entry[1])
                else:
                    keep.append(entry)
            entries = keep
        total = sum(e[2] for e in entries)
        n_drop = 0
        if items_limit is not None and len(entries) > items_limit:
            n_drop = len(entries) - items_limit
        while n_drop < len(entries) and bytes_limit is not None and total > bytes_limit:
            total -= entries[n_drop][2]
            n_drop += 1
        for entry in entries[:n_drop]:
            _unlink(entry[1])
        with _SIZE_LOCK:
            self._size_at_scan = sum(e[2] for e in entries[n_drop:])
            self._written_since_scan = 0


def _unlink(path):
    try:
        os.unlink(path)
    except OSError:
        pass


def _compress_spec(compress):
    """None, or ``compress`` checked by cyjob.dump's rules (joblib's values,
    plus lz4 and zstd)."""
    if compress is False or compress is None or compress == 0:
        return None
    from cyjob.persist.api import _compression

    _method, level = _compression(compress, None)
    return None if level == 0 else compress


_STORE_BACKENDS = {"local": LocalStoreBackend}


def register_store_backend(backend_name, backend):
    """Extend available store backends.

    Parameters
    ----------
    backend_name : str
        The name identifying the store backend being registered.
    backend : type
        A subclass of ``cyjob.cache.store.StoreBackendBase``.
    """
    if not isinstance(backend_name, str):
        raise ValueError("Store backend name should be a string, '{0}' given.".format(
            backend_name))
    if not (isinstance(backend, type) and issubclass(backend, StoreBackendBase)):
        raise ValueError("Store backend should inherit StoreBackendBase, '{0}' given.".format(
            backend))
    _STORE_BACKENDS[backend_name] = backend


def make_store(backend, location, verbose, backend_options):
    if isinstance(location, StoreBackendBase):
        return location
    if location is None:
        return None
    if not isinstance(location, (str, os.PathLike)):
        raise TypeError("location must be a str, an os.PathLike, a store backend or "
                        "None, got %r" % (location,))
    if backend not in _STORE_BACKENDS:
        raise TypeError("Unknown location {0} or backend {1}".format(location, backend))
    store = _STORE_BACKENDS[backend]()
    store.configure(os.path.join(os.fspath(location), "cyjob"), verbose=verbose,
                    backend_options=backend_options)
    return store
