"""cyjob's file format: one pickle stream plus its out-of-band buffers.

Layout (all integers little-endian)::

    header   64 bytes: magic b"\\x89CYJOB\\r\\n", u16 format version, u8 codec,
             u8 flags (0), u32 chunk size, u64 pickle size, u64 number of
             buffers, 24 reserved zero bytes, u64 xxh3-64 of the 56 bytes before
    table    one u64 per buffer: its size in bytes; then the table's checksum
    pickle   the protocol 5 pickle stream
    buffers  the PEP 574 buffers (numpy arrays' memory), in the pickle's order
    end      b"\\x89CYJEND\\n"

Uncompressed (codec 0), the pickle and each buffer are written raw, each
followed by its u64 checksum, and every buffer starts at a multiple of 64
bytes from the header, so ``mmap_mode`` maps it in place.  Mapping it
writable ("r+") sets flag bit 0 (``WRITABLE_MAPPED``) in the header: from
then on the buffers may have changed in place, and their checksums are no
longer compared (the header, table and pickle still are).  A block's checksum
is the xxh3-64 of the xxh3-64 digests of its ``chunk size`` pieces: the
pieces are hashed on worker threads while the caller writes or reads.

Compressed, the pickle and the buffers are cut in ``chunk size`` pieces, and
each piece is a frame: u32 stored size, u32 raw size, u64 xxh3-64 of the
stored bytes, then the bytes compressed on their own (pieces are compressed
on worker threads).  A reader checks every frame before decompressing it.
"""

import io
import os
import pickle
import stat
import struct
import copyreg

import numpy as np
import xxhash

from cyjob.persist._threads import ordered_map
from cyjob.persist.codecs import CODECS_BY_ID

MAGIC = b"\x89CYJOB\r\n"
END = b"\x89CYJEND\n"
VERSION = 1
#: Buffers start on a multiple of this from the header: a cache line, more
#: than any dtype needs (joblib aligns to 16).
ALIGN = 64
#: Hash pieces of uncompressed blocks: a few per core for 100 MB arrays, a
#: few tens of microseconds of pool overhead per piece.
HASH_CHUNK = 8 << 20
#: Compressed frames: big enough for the codecs' ratios (zstd -3 on 4 MiB of
#: low-entropy floats is within 1% of one 200 MB stream), small enough for
#: every core to get work and memory to stay bounded.
FRAME_CHUNK = 4 << 20

_HEADER = struct.Struct("<8sHBBIQQ24s")
HEADER_SIZE = _HEADER.size + 8
#: Header flag: the buffers were memory-mapped writable, their checksums are stale.
WRITABLE_MAPPED = 1
_FRAME = struct.Struct("<IIQ")
_U64 = struct.Struct("<Q")
_digest = xxhash.xxh3_64_intdigest


class CorruptFileError(ValueError):
    """The file is truncated, or its contents do not match their checksums."""


# -- checksums ----------------------------------------------------------------

def _chunks(view, size):
    return [view[i:i + size] for i in range(0, view.nbytes, size)]


def _combine(digests):
    return _digest(struct.pack(f"<{len(digests)}Q", *digests))


# -- writing --------------------------------------------------------------------

class _Sink:
    """Writes to a file object, counting bytes; small pieces are gathered
    into one write, large buffers are written straight from their memory."""

    def __init__(self, file):
        self.file = file
        self.pos = 0
        self.pending = bytearray()

    def small(self, data):
        self.pending += data
        self.pos += len(data)

    def big(self, view):
        if view.nbytes < 65536:
            return self.small(view)
        self.flush()
        self._write(view)
        self.pos += view.nbytes

    def pad(self):
        self.small(b"\0" * (-self.pos % ALIGN))

    def flush(self):
        if self.pending:
            self._write(self.pending)
            self.pending = bytearray()

    def _write(self, data):
        view = memoryview(data).cast("B")
        while view.nbytes:
            # A raw file may write part of a large buffer (Linux: < 2 GiB).
            n = self.file.write(view[:1 << 30])
            if n is None:
                n = min(view.nbytes, 1 << 30)
            view = view[n:]


class _DispatchTable(dict):
    """How cyjob pickles numpy arrays; other types as copyreg says."""

    def __missing__(self, cls):
        return copyreg.dispatch_table[cls]


#: numpy's own rebuilder of an out-of-band array (``numpy._core.numeric``
#: or, numpy < 2, ``numpy.core.numeric``): what its reductions name.
_NUMPY_FROMBUFFER = np.zeros(1).__reduce_ex__(5)[0]


def _reduce_ndarray(array):
    # numpy writes a non-contiguous array in band (a bytes copy inside the
    # pickle); a contiguous copy goes out of band, so it can be memory-mapped.
    if (not array.flags.c_contiguous and not array.flags.f_contiguous
            and not array.dtype.hasobject and array.dtype.itemsize):
        array = np.ascontiguousarray(array)
    if not array.dtype.hasobject and array.dtype.itemsize:
        try:
            memoryview(array)
        except ValueError:
            # numpy exports no buffer of datetime64/timedelta64 items, so it
            # pickles them in band: their raw bytes go out of band instead,
            # rebuilt by numpy's own function (plain pickle.loads reads them).
            order = "F" if array.flags.f_contiguous and not array.flags.c_contiguous else "C"
            raw = array.ravel(order=order).view(np.uint8)
            return _NUMPY_FROMBUFFER, (pickle.PickleBuffer(raw), array.dtype, array.shape,
                                       order)
    return array.__reduce_ex__(5)


def _reduce_memmap(array):
    # A memmap is stored as the array it holds (joblib does the same).
    return _reduce_ndarray(array.view(np.ndarray))


_DISPATCH = _DispatchTable({np.ndarray: _reduce_ndarray, np.memmap: _reduce_memmap})


def _raw(buffer):
    try:
        return buffer.raw()
    except BufferError:  # a non-contiguous PEP 574 buffer (not numpy's)
        return memoryview(memoryview(buffer).tobytes())


def pickle_value(value):
    """The protocol 5 pickle of ``value`` and its out-of-band buffers (views
    of the objects' memory, no copies)."""
    buffers = []
    out = io.BytesIO()
    pickler = pickle.Pickler(out, protocol=5, buffer_callback=buffers.append)
    pickler.dispatch_table = _DISPATCH
    pickler.dump(value)
    return out.getbuffer(), [_raw(b) for b in buffers]


def pack_header(codec_id, flags, chunk, pickle_size, n_buffers):
    head = _HEADER.pack(MAGIC, VERSION, codec_id, flags, chunk, pickle_size, n_buffers, b"")
    return head + _U64.pack(_digest(head))


def write(file, value, codec=None, level=None):
    """Write ``value`` to the binary file object ``file`` in cyjob's format."""
    data, buffers = pickle_value(value)
    chunk = HASH_CHUNK if codec is None else FRAME_CHUNK
    sink = _Sink(file)
    sink.small(pack_header(0 if codec is None else codec.ident, 0, chunk, data.nbytes,
                           len(buffers)))
    table = struct.pack(f"<{len(buffers)}Q", *[b.nbytes for b in buffers])
    sink.small(table + _U64.pack(_digest(table)))
    if codec is None:
        _write_plain(sink, data)
        for buffer in buffers:
            sink.pad()
            _write_plain(sink, buffer)
    else:
        _write_frames(sink, [data] + buffers, codec, level)
    sink.small(END)
    sink.flush()


def _write_plain(sink, view):
    pieces = _chunks(view, HASH_CHUNK)
    digests = ordered_map(_digest, ((p,) for p in pieces), len(pieces))
    try:
        # Each piece is hashed on a worker while the caller writes it.
        hashed = []
        for piece in pieces:
            sink.big(piece)
            hashed.append(next(digests))
    finally:
        digests.close()
    sink.small(_U64.pack(_combine(hashed)))


def _encode(codec, level, piece):
    stored = codec.encode(piece, level)
    return stored, piece.nbytes, _digest(stored)


def _write_frames(sink, views, codec, level):
    pieces = [p for v in views for p in _chunks(v, FRAME_CHUNK)]
    frames = ordered_map(_encode, ((codec, level, p) for p in pieces), len(pieces))
    try:
        for stored, raw_size, digest in frames:
            sink.small(_FRAME.pack(len(stored), raw_size, digest))
            sink.big(memoryview(stored))
    finally:
        frames.close()


# -- reading --------------------------------------------------------------------

class _Source:
    """Reads exact amounts from a file object; a short read means the file
    is truncated."""

    def __init__(self, file, name):
        self.file = file
        self.name = name
        self.pos = 0

    def truncated(self, what):
        return CorruptFileError(f"{self.name} is truncated: it ends in {what}, "
                                f"{self.pos} bytes into the cyjob file")

    def read(self, n, what):
        parts = []
        left = n
        while left:
            part = self.file.read(left)
            if not part:
                raise self.truncated(what)
            parts.append(part)
            left -= len(part)
            self.pos += len(part)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def read_into(self, view, what):
        readinto = getattr(self.file, "readinto", None)
        while view.nbytes:
            if readinto is not None:
                n = readinto(view)
            else:
                part = self.file.read(view.nbytes)
                n = len(part)
                view[:n] = part
            if not n:
                raise self.truncated(what)
            view = view[n:]
            self.pos += n

    def skip_padding(self):
        if self.pos % ALIGN:
            self.read(-self.pos % ALIGN, "padding")


class Header:
    """The parsed, checked header of a cyjob file."""

    def __init__(self, raw, name):
        if len(raw) < HEADER_SIZE:
            raise CorruptFileError(f"{name} is truncated: it ends in the cyjob header")
        fields = _HEADER.unpack_from(raw)
        (digest,) = _U64.unpack_from(raw, _HEADER.size)
        if _digest(raw[:_HEADER.size]) != digest:
            raise CorruptFileError(f"{name} is corrupt: the checksum of its header does "
                                   "not match")
        _, self.version, self.codec_id, self.flags, self.chunk, self.pickle_size, \
            self.n_buffers, _ = fields
        codec_id = self.codec_id
        if self.version > VERSION:
            raise ValueError(f"{name} was written in cyjob file format version "
                             f"{self.version}; this cyjob reads up to version {VERSION}: "
                             "upgrade cyjob")
        if codec_id and codec_id not in CODECS_BY_ID:
            raise CorruptFileError(f"{name} names an unknown compression method "
                                   f"({codec_id})")
        self.codec = CODECS_BY_ID.get(codec_id)
        if self.codec is not None:
            self.codec.require()
        if not 1024 <= self.chunk <= 1 << 30:
            raise CorruptFileError(f"{name} is corrupt: chunk size {self.chunk}")


def _table_size(header):
    # A u64 length per buffer, then the table's own u64 checksum.
    return 8 * header.n_buffers + 8


def _read_table(src, header):
    table = src.read(_table_size(header), "the buffer table")
    (digest,) = _U64.unpack_from(table, 8 * header.n_buffers)
    if _digest(table[:-8]) != digest:
        raise CorruptFileError(f"{src.name} is corrupt: the checksum of its buffer table "
                               "does not match")
    return list(struct.unpack_from(f"<{header.n_buffers}Q", table))


def read(file, name, mmap_mode=None, path=None, unpickler=None, warn=None):
    """Read a cyjob file from ``file`` (positioned at its magic number).

    With ``mmap_mode`` (and ``path``, the file's name on disk), uncompressed
    buffers are memory-mapped from ``path`` instead of read; a compressed
    file calls ``warn()`` instead.  ``unpickler`` is ``(file, buffers) ->
    pickle.Unpickler``.
    """
    src = _Source(file, name)
    header = Header(src.read(HEADER_SIZE, "the cyjob header"), name)
    left = _bytes_left(file)
    if left is not None and _table_size(header) > left:
        raise src.truncated("the buffer table")
    sizes = _read_table(src, header)
    if left is not None:
        _check_fits(src, header, sizes, left - _table_size(header))
    if header.codec is None:
        data = _read_plain(src, np.empty(header.pickle_size, np.uint8), header.chunk,
                           "the pickle stream")
        if mmap_mode is not None:
            buffers = _map_buffers(src, sizes, path, mmap_mode)
            if mmap_mode in ("r+", "w+") and not header.flags & WRITABLE_MAPPED:
                _mark_writable_mapped(path, header)
        else:
            check = not header.flags & WRITABLE_MAPPED
            buffers = []
            for i, size in enumerate(sizes):
                src.skip_padding()
                buffers.append(_read_plain(src, np.empty(size, np.uint8), header.chunk,
                                           f"buffer {i}", check))
    else:
        if mmap_mode is not None and warn is not None:
            warn()
        blocks = _read_frames(src, [header.pickle_size] + sizes, header)
        data, buffers = blocks[0], blocks[1:]
    if src.read(len(END), "the end marker") != END:
        raise CorruptFileError(f"{name} is corrupt: its end marker is missing")
    if unpickler is None:
        return pickle.loads(data, buffers=buffers)
    return unpickler(io.BytesIO(data), buffers).load()


def _bytes_left(file):
    """The bytes from ``file``'s position to its end if it is a regular file
    read directly or a BytesIO, else None (a decompressing reader's position
    is not one in the file under it)."""
    if type(file) is io.BytesIO:
        # (bytes in memory: a download cut short is as truncated as a file)
        with file.getbuffer() as view:
            return view.nbytes - file.tell()
    if not isinstance(getattr(file, "raw", file), io.FileIO):
        return None
    try:
        st = os.fstat(file.fileno())
        return st.st_size - file.tell() if stat.S_ISREG(st.st_mode) else None
    except (OSError, ValueError):
        return None


def _check_fits(src, header, sizes, left):
    """Raise "truncated" if the blocks the header and table declare cannot
    fit in the ``left`` bytes after the table: checked before the blocks are
    allocated, since the sizes of a huge file cut short may exceed memory."""
    blocks = [header.pickle_size] + sizes
    if header.codec is None:  # raw, each followed by its checksum
        need = sum(blocks) + 8 * len(blocks)
    else:  # at least a frame header per piece
        need = _FRAME.size * sum(-(-size // header.chunk) for size in blocks)
    if need + len(END) > left:
        raise CorruptFileError(f"{src.name} is truncated: its header and buffer table "
                               f"describe at least {need + len(END)} more bytes, "
                               f"{left} are left")


def _mark_writable_mapped(path, header):
    # Writes through the map change the buffers behind their checksums.
    with open(path, "r+b") as f:
        f.write(pack_header(header.codec_id, header.flags | WRITABLE_MAPPED, header.chunk,
                            header.pickle_size, header.n_buffers))


def _read_plain(src, out, chunk, what, check=True):
    view = memoryview(out)
    pieces = _chunks(view, chunk)

    def read_pieces():
        for piece in pieces:
            src.read_into(piece, what)
            yield (piece,)

    # The caller reads piece i + 1 while a worker hashes piece i.
    digests = ordered_map(_digest, read_pieces(), len(pieces))
    try:
        combined = _combine(list(digests))
    finally:
        digests.close()
    (expected,) = _U64.unpack(src.read(8, f"the checksum of {what}"))
    if check and combined != expected:
        raise CorruptFileError(f"{src.name} is corrupt: the checksum of {what} does "
                               "not match")
    return out


def _map_buffers(src, sizes, path, mode):
    file_size = os.fstat(src.file.fileno()).st_size
    base = src.pos
    offsets = []
    pos = base
    for size in sizes:
        pos += -pos % ALIGN
        offsets.append(pos)
        pos += size + 8
    end = pos + len(END)
    if file_size < end:
        raise CorruptFileError(f"{src.name} is truncated: {file_size} bytes, "
                               f"{end} expected")
    src.file.seek(pos)
    src.pos = pos
    if mode == "w+":
        mode = "r+"  # "w+" would create the file anew (joblib maps it to "r+" too)
    whole = np.memmap(path, dtype=np.uint8, mode=mode)
    buffers = []
    for offset, size in zip(offsets, sizes):
        if not size:  # (whole[offset:offset] would be a plain ndarray)
            buffers.append(empty_memmap(path, mode, offset))
            continue
        segment = whole[offset:offset + size]
        segment.offset = offset  # what np.memmap reports for a map of its own
        buffers.append(segment)
    return buffers


def empty_memmap(path, mode, offset, dtype=np.uint8, shape=(0,), order="C"):
    """An ``np.memmap`` of no bytes, at ``offset`` in the file ``path``.

    numpy makes none itself: an empty slice or view of a map shares no memory
    with it, so it comes back a plain ndarray (or a memmap that has forgotten
    its file), and ``np.memmap`` of zero bytes asks mmap for length 0, which
    maps the whole rest of the file or fails at its end.  There is nothing
    to map: an array of the subclass with the attributes a map has is all
    that joblib's loads return for an empty array.
    """
    empty = np.ndarray.__new__(np.memmap, shape, dtype, order=order)
    empty.filename = os.path.abspath(path)
    empty.offset = offset
    empty.mode = mode
    if mode == "r":
        empty.flags.writeable = False
    return empty


def _check_decode(codec, stored, digest, out, name, what):
    if _digest(stored) != digest:
        raise CorruptFileError(f"{name} is corrupt: the checksum of a frame of {what} "
                               "does not match")
    try:
        raw = codec.decode(stored, out.nbytes)
    except Exception as exc:  # a valid checksum over a bad stream: a bug or a collision
        raise CorruptFileError(f"{name} is corrupt: a frame of {what} does not "
                               f"decompress ({exc})") from exc
    if len(raw) != out.nbytes:
        raise CorruptFileError(f"{name} is corrupt: a frame of {what} decompresses to "
                               f"{len(raw)} bytes, {out.nbytes} expected")
    out[:] = raw


def _read_frames(src, sizes, header):
    blocks = [np.empty(size, np.uint8) for size in sizes]
    chunk = header.chunk
    limit = chunk + (chunk >> 3) + 65536  # the worst expansion of any codec here

    def frames():
        for i, block in enumerate(blocks):
            what = "the pickle stream" if i == 0 else f"buffer {i - 1}"
            view = memoryview(block)
            for piece in _chunks(view, chunk):
                stored_size, raw_size, digest = _FRAME.unpack(src.read(_FRAME.size, what))
                if raw_size != piece.nbytes or stored_size > limit:
                    raise CorruptFileError(f"{src.name} is corrupt: a frame header of "
                                           f"{what} does not match its table")
                stored = src.read(stored_size, what)
                yield header.codec, stored, digest, piece, src.name, what

    n = sum(-(-size // chunk) for size in sizes)
    done = ordered_map(_check_decode, frames(), n)
    try:
        for _ in done:
            pass
    finally:
        done.close()
    return blocks
