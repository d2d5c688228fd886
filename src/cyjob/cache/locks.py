"""Single-flight: one computation per cache key across threads and processes.

A key's computer holds an exclusive lock that belongs to an *open file
description*: two threads of one process that each hold their own
description of the file exclude each other like two processes do, and the
kernel drops the lock when its holder dies (a SIGKILLed computer's waiters
take over at once).

On Linux the lock is an OFD byte-range lock (``F_OFD_SETLKW``) on one byte
of the store's single lock file, the byte chosen by the key's hash: no file
is created per key (creating a file costs more than the rest of a miss on a
busy disk).  Two keys that share a byte (one chance in 2**31) just take
turns.  The store keeps that file open (``LockFile``: a pool of
descriptions, one per thread computing at once) instead of opening it per
miss.  Elsewhere it is an ``fcntl.flock`` on ``<entry>.lock``.  NFS aside:
these locks are local to a client there.
"""

import errno
import fcntl
import os
import struct
import threading
import time
import weakref

import xxhash

OFD_LOCKS = hasattr(fcntl, "F_OFD_SETLKW")
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


class LockFile:
    """The store's lock file, kept open: a pool of open descriptions of it.

    Opening the file for every miss cost an ``open`` and a ``close`` (3-9 us
    each on a busy ext4); a key's lock now borrows an idle description,
    locks its byte, unlocks it (``F_UNLCK``) and gives it back.  Each
    borrower holds its own description, so two threads of one process
    exclude each other in the kernel as two processes do, and the kernel
    still drops a SIGKILLed process's locks (its descriptors close).

    A forked child closes its copies at once (``_close_in_children``): a
    copy shares the parent's description, so it would neither exclude the
    parent nor let the parent's locks go if the parent died.  A lock file
    removed or replaced (the cache folder deleted by hand) is noticed within
    ``RECHECK_SECONDS``: descriptions of the old file are closed, as they
    exclude no newcomer.
    """

    __slots__ = ("path", "generation", "_idle", "_current", "_opened", "_ident",
                 "_recheck_at", "_mutex", "__weakref__")

    def __init__(self, path):
        self.path = path
        self.generation = _generation
        self._idle = []  # open descriptions of the current file, holding no lock
        self._current = set()  # descriptors open on the current file
        self._opened = set()  # every descriptor open (closed in a forked child)
        self._ident = None  # (st_dev, st_ino) of the current file
        self._recheck_at = 0.0
        self._mutex = threading.Lock()  # opening, closing, rechecking
        _lock_files.add(self)

    def take(self):
        """A descriptor holding no lock, or -1 if the file cannot be opened
        for writing (a read-only folder: the caller computes unlocked)."""
        if time.monotonic() >= self._recheck_at:
            self._recheck()
        try:
            return self._idle.pop()  # atomic under the GIL: one borrower each
        except IndexError:
            return self._open()

    def give(self, fd, generation):
        """Take back a borrowed ``fd`` whose locks were released."""
        if generation != self.generation:
            return  # borrowed before a fork: the child closed it then
        if fd in self._current and len(self._idle) < _IDLE_KEPT:
            self._idle.append(fd)
        else:
            self._close(fd)

    def _recheck(self):
        with self._mutex:
            self._recheck_at = time.monotonic() + RECHECK_SECONDS
            try:
                st = os.stat(self.path)
                ident = (st.st_dev, st.st_ino)
            except OSError:
                ident = None
            if ident == self._ident:
                return
            self._ident = None
            self._current.clear()  # borrowed ones are closed when given back
        self.close_idle()

    def _open(self):
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
        except FileNotFoundError:
            try:
                os.makedirs(os.path.dirname(self.path), exist_ok=True)
            except OSError as exc:
                if exc.errno in UNWRITABLE:
                    return -1
                raise
            return self._open()
        except OSError as exc:
            if exc.errno in UNWRITABLE:
                return -1
            raise
        st = os.fstat(fd)
        with self._mutex:
            self._opened.add(fd)
            if self._ident is None:
                self._ident = (st.st_dev, st.st_ino)
            if self._ident == (st.st_dev, st.st_ino):
                self._current.add(fd)
        return fd

    def _close(self, fd):
        with self._mutex:
            self._current.discard(fd)
            self._opened.discard(fd)
        os.close(fd)

    def close(self):
        """Close the idle descriptors; the borrowed ones close when given
        back."""
        with self._mutex:
            self._current.clear()
        self.close_idle()

    def close_idle(self):
        # Whoever pops a descriptor closes it: never twice.
        while self._idle:
            try:
                fd = self._idle.pop()
            except IndexError:
                break
            self._close(fd)

    def _forget_after_fork(self):
        # The child's only thread: no lock is held by anyone here.
        self._mutex = threading.Lock()
        self.generation = _generation
        self._idle.clear()
        self._current.clear()
        for fd in self._opened:
            try:
                os.close(fd)
            except OSError:
                pass
        self._opened.clear()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass


#: How often (s) a pool checks that its file is still the store's.
RECHECK_SECONDS = 1.0
#: Idle descriptions a pool keeps (one per thread that misses at once).
_IDLE_KEPT = 8
_generation = 0
_lock_files: "weakref.WeakSet[LockFile]" = weakref.WeakSet()


def _close_in_children():
    global _generation
    _generation += 1
    for lock_file in list(_lock_files):
        lock_file._forget_after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_close_in_children)


class ByteLock:
    """An OFD lock on one byte of the store's lock file, through a
    description borrowed from its pool: KeyLock's API, no file per key."""

    __slots__ = ("lock_file", "slot", "fd", "generation", "usable")

    def __init__(self, lock_file, key):
        self.lock_file = lock_file
        self.slot = xxhash.xxh3_64_intdigest(key.encode("utf-8", "surrogateescape")) % _SLOTS
        self.fd = -1
        self.usable = True

    def acquire(self, blocking=True):
        lock_file = self.lock_file
        generation = lock_file.generation
        fd = lock_file.take()
        if fd < 0:
            self.usable = False
            return True
        request = _FLOCK.pack(fcntl.F_WRLCK, os.SEEK_SET, self.slot, 1, 0)
        try:
            # fcntl.fcntl releases the GIL while it waits (and retries EINTR).
            fcntl.fcntl(fd, fcntl.F_OFD_SETLKW if blocking else fcntl.F_OFD_SETLK, request)
        except BaseException as exc:
            lock_file.give(fd, generation)
            if (not blocking and isinstance(exc, OSError)
                    and exc.errno in (errno.EAGAIN, errno.EACCES)):
                return False
            raise
        self.fd = fd
        self.generation = generation
        return True

    def release(self, remove=False):
        if self.fd < 0:
            return
        fd, self.fd = self.fd, -1
        if self.generation != self.lock_file.generation:
            return  # forked since: the child closed the parent's descriptors
        try:
            fcntl.fcntl(fd, fcntl.F_OFD_SETLK,
                        _FLOCK.pack(fcntl.F_UNLCK, os.SEEK_SET, self.slot, 1, 0))
        except OSError:
            try:
                self.lock_file._close(fd)  # closing drops the lock too
            except OSError:
                pass
            return
        self.lock_file.give(fd, self.generation)

    def __enter__(self):
        self.acquire()
        return self

    def __exit__(self, *exc):
        self.release()


def key_lock(store_location, entry_path, lock_file=None):
    """The lock of the cache entry at ``entry_path``; ``lock_file`` is the
    store's ``LockFile`` (Linux; one is made if not given)."""
    if OFD_LOCKS:
        if lock_file is None:
            lock_file = LockFile(store_location + os.sep + ".lock")
        return ByteLock(lock_file, entry_path)
    return KeyLock(entry_path + ".lock")
