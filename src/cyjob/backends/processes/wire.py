"""The wire format between the parent and its worker processes.

A message is a header ``(token, payload length, number of buffers)``, the
buffer lengths, the pickle payload, then the pickle-protocol-5 out-of-band
buffers, so large numpy arrays cross without being copied into the pickle.

Imported by the fork server before it forks any worker: no numpy, no thread.
"""

import io
import struct

_HEADER = struct.Struct("<QQI")
_LENGTH = struct.Struct("<Q")
# Buffers smaller than this travel inside the pickle: a separate write per
# buffer costs more than copying a few KB.
OUT_OF_BAND_MIN = 64 * 1024
# Above this, the payload is written on its own rather than joined to its
# header (joining copies it).
_JOIN_MAX = 256 * 1024
#: The token of a message that sets the worker's sys.path (the pickled list)
#: before the jobs that follow it; jobs' tokens start at 1.
SET_SYS_PATH = 0


def send_msg(sock, token, payload, buffers=()):
    """Write one message: ``payload`` (bytes-like) and its out-of-band buffers."""
    n = len(buffers)
    head = _HEADER.pack(token, len(payload), n)
    if n:
        views = [memoryview(b).cast("B") for b in buffers]
        head += b"".join(_LENGTH.pack(v.nbytes) for v in views)
    else:
        views = ()
    if len(payload) <= _JOIN_MAX:
        sock.sendall(head + payload)
    else:
        sock.sendall(head)
        sock.sendall(payload)
    for view in views:
        sock.sendall(view)


def _recv_exact(sock, n):
    """``n`` bytes from ``sock`` in a fresh bytearray; None at EOF."""
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        k = sock.recv_into(view[got:])
        if k == 0:
            return None
        got += k
    return buf


def recv_msg(sock):
    """Read one message; return ``(token, payload, buffers)``, or None at EOF."""
    head = _recv_exact(sock, _HEADER.size)
    if head is None:
        return None
    token, size, n = _HEADER.unpack(head)
    lengths = ()
    if n:
        raw = _recv_exact(sock, _LENGTH.size * n)
        if raw is None:
            return None
        lengths = [_LENGTH.unpack_from(raw, i * _LENGTH.size)[0] for i in range(n)]
    payload = _recv_exact(sock, size) if size else bytearray()
    if payload is None:
        return None
    buffers = []
    for length in lengths:
        buf = _recv_exact(sock, length)
        if buf is None:
            return None
        buffers.append(buf)
    return token, payload, buffers


def dumps(obj, pickler_cls=None, memory=None):
    """Pickle with protocol 5; return ``(payload, out_of_band_buffers)``.

    ``pickler_cls`` defaults to cloudpickle's; ``memory`` is set on the
    pickler (the caller's large-array policy, see ``sharedmem``)."""
    import cloudpickle  # not at import: the parent loads it while the fork server boots

    buffers = []

    def keep(buf):
        # False (None) sends the buffer out of band; True keeps it in-band.
        if buf.raw().nbytes < OUT_OF_BAND_MIN:
            return True
        buffers.append(buf)
        return None

    out = io.BytesIO()
    pickler = (pickler_cls or cloudpickle.CloudPickler)(out, protocol=5, buffer_callback=keep)
    if memory is not None:
        pickler.memory = memory
    pickler.dump(obj)
    return out.getbuffer(), buffers
