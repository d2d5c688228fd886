"""Single-flight: one computation per cache key across threads and processes.

A key's computer holds an exclusive ``fcntl.flock`` on ``<entry>.lock``.
flock locks belong to an open file description, so two threads of one
process that each open the file exclude each other like two processes do,
and the kernel drops the lock when its holder dies (a SIGKILLed computer's
waiters take over at once).  NFS aside: flock there is local to a client.
"""

import errno
import fcntl
import os

# Errors that mean "this folder cannot hold a lock file": compute unlocked.
_UNWRITABLE = (errno.EACCES, errno.EROFS, errno.EPERM, errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


class KeyLock:
    """The exclusive lock of one cache key (a context manager).

    ``acquire(blocking=False)`` returns False when another holds it.  A
    folder where no lock file can be created gives a lock that is always
    "held" (``usable`` False): the caller computes without exclusion.
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
            if exc.errno in _UNWRITABLE:
                self.usable = False
                return True
            raise
        try:
            # fcntl.flock releases the GIL while it waits.
            fcntl.flock(fd, fcntl.LOCK_EX if blocking else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        except BaseException:
            os.close(fd)
            raise
        self.fd = fd
        return True

    def release(self, remove=False):
        """Release; ``remove`` also unlinks the lock file (do it only once
        the entry is written: a newcomer then finds the entry first)."""
        if self.fd < 0:
            return
        if remove:
            try:
                os.unlink(self.path)
            except OSError:
                pass
        fd, self.fd = self.fd, -1
        os.close(fd)  # closing the last descriptor drops the flock

    def __enter__(self):
        self.acquire()
        return self

    def __exit__(self, *exc):
        self.release()
