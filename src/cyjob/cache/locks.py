"""Single-flight: one computation per cache key across threads and processes.

A key's computer holds an exclusive lock that belongs to an *open file
description*: two threads of one process that each open the file exclude
each other like two processes do, and the kernel drops the lock when its
holder dies (a SIGKILLed computer's waiters take over at once).

On Linux the lock is an OFD byte-range lock (``F_OFD_SETLKW``) on one byte
of the store's single lock file, the byte chosen by the key's hash: no file
is created per key (creating a file costs more than the rest of a miss on a
busy disk).  Two keys that share a byte (one chance in 2**31) just take
turns.  Elsewhere it is an ``fcntl.flock`` on ``<entry>.lock``.  NFS aside:
these locks are local to a client there.
"""

import errno
import fcntl
import os
import struct

import xxhash

_OFD = hasattr(fcntl, "F_OFD_SETLKW")
# struct flock on Linux: l_type, l_whence, (pad), l_start, l_len, l_pid, (pad)
_FLOCK = struct.Struct("=hh4xqqi4x")
_SLOTS = 1 << 31

# Errors that mean "this folder cannot take writes now": the lock's caller
# computes unlocked, the store computes without storing (and warns once).
UNWRITABLE = (errno.EACCES, errno.EROFS, errno.EPERM, errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


class _FileLock:
    """An exclusive lock held through an open file description (a context
    manager).

    ``acquire(blocking=False)`` returns False when another holds it.  A
    folder where no lock file can be created gives a lock that is always
    "held" (``usable`` False): the caller computes without exclusion.
    Subclasses say how the open file is locked (``_lock``).
    """

    __slots__ = ("path", "fd", "usable")

    def __init__(self, path):
        self.path = path
        self.fd = -1
        self.usable = True

    def acquire(self, blocking=True):
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
        except FileNotFoundError:
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            return self.acquire(blocking)
        except OSError as exc:
            if exc.errno in UNWRITABLE:
                self.usable = False
                return True
            raise
        try:
            locked = self._lock(fd, blocking)
        except BaseException:
            os.close(fd)
            raise
        if not locked:
            os.close(fd)
            return False
        self.fd = fd
        return True

    def _lock(self, fd, blocking):
        """Lock the open ``fd``; False if not blocking and another holds it."""
        raise NotImplementedError

    def release(self, remove=False):
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            os.close(fd)  # closing the description drops its locks

    def __enter__(self):
        self.acquire()
        return self

    def __exit__(self, *exc):
        self.release()


class KeyLock(_FileLock):
    """The exclusive lock of one cache key: an ``fcntl.flock`` on a file of
    its own."""

    __slots__ = ()

    def _lock(self, fd, blocking):
        try:
            # fcntl.flock releases the GIL while it waits.
            fcntl.flock(fd, fcntl.LOCK_EX if blocking else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True

    def release(self, remove=False):
        """Release; ``remove`` also unlinks the lock file (do it only once
        the entry is written: a newcomer then finds the entry first)."""
        if self.fd >= 0 and remove:
            try:
                os.unlink(self.path)
            except OSError:
                pass
        super().release()


class ByteLock(_FileLock):
    """An OFD lock on byte ``slot`` of ``path``: KeyLock's API, no file per key."""

    __slots__ = ("slot",)

    def __init__(self, path, key):
        super().__init__(path)
        self.slot = xxhash.xxh3_64_intdigest(key.encode("utf-8", "surrogateescape")) % _SLOTS

    def _lock(self, fd, blocking):
        request = _FLOCK.pack(fcntl.F_WRLCK, os.SEEK_SET, self.slot, 1, 0)
        try:
            # fcntl.fcntl releases the GIL while it waits (and retries EINTR).
            fcntl.fcntl(fd, fcntl.F_OFD_SETLKW if blocking else fcntl.F_OFD_SETLK, request)
        except OSError as exc:
            if not blocking and exc.errno in (errno.EAGAIN, errno.EACCES):
                return False
            raise
        return True


def key_lock(store_location, entry_path):
    """The lock of the cache entry at ``entry_path``."""
    if _OFD:
        return ByteLock(store_location + os.sep + ".lock", entry_path)
    return KeyLock(entry_path + ".lock")
