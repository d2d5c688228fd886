"""Crash-safe writes: a temporary file beside the target, renamed into place."""

import contextlib
import os
import secrets
import stat
import threading

#: Every temporary file of a dump ends so (a store may clean up the ones a
#: killed process left behind).
TEMP_SUFFIX = ".cyjob-tmp"
#: Replacing a file at least this large lets a helper thread free the old
#: file's pages (bench_persistence: unlinking 200 MB on tmpfs costs ~0.3x
#: writing it; a thread costs ~0.1 ms, the free of 16 MB ~1.5 ms).
RELEASE_LATER_BYTES = 16 << 20


def temp_name(path):
    """A fresh temporary name in ``path``'s directory (so the rename that
    publishes it is atomic: same file system)."""
    directory, base = os.path.split(path)
    return os.path.join(directory, f".{base}.{os.getpid()}.{secrets.token_hex(4)}{TEMP_SUFFIX}")


@contextlib.contextmanager
def atomic_write(path):
    """Yield a raw binary file; when the block ends normally, it replaces
    ``path`` in one ``os.replace``.

    A process killed meanwhile leaves the old ``path`` (or none) and a
    temporary file; any exception removes the temporary file.  Data is not
    fsync'ed (neither joblib nor ``np.save`` does): the rename protects
    against a dying process, not against a dying machine.
    """
    if os.path.islink(path):
        path = os.path.realpath(path)  # replace what the link points to, as open() writes there
    temp = temp_name(path)
    # 0o666 & ~umask, as open(path, "wb") would create it.
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0),
                 0o666)
    old = None
    try:
        with open(fd, "wb", buffering=0) as file:
            try:
                old = os.stat(path)
                # A file replaced keeps its permissions, as one rewritten in place would.
                os.fchmod(fd, old.st_mode & 0o7777)
            except (FileNotFoundError, AttributeError):
                pass
            yield file
        old_fd = _hold(path, old)
        try:
            os.replace(temp, path)
        finally:
            if old_fd is not None:
                _release_later(old_fd)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise


# -- freeing the replaced file off the caller's path ----------------------------
#
# The rename that publishes a file drops the last link to the file it
# replaces, and the kernel frees that file's pages or blocks right there, in
# the caller's os.replace (for 200 MB on tmpfs ~20 ms, 0.3x the write).  A
# descriptor opened on the old file before the rename keeps its inode alive;
# closing it on a short-lived thread does the freeing beside the caller.
# (np.save and joblib pay it up front: they truncate the file in place, which
# is what makes them unsafe against a crash.)

#: Descriptors of replaced files whose closing thread has not closed them yet.
_held = set()


def _hold(path, old):
    """A read-only descriptor on the file about to be replaced, if freeing
    it is worth a thread: a large regular file with no other link."""
    # POSIX only: elsewhere an open file cannot be replaced.
    if (os.name != "posix" or old is None or not stat.S_ISREG(old.st_mode)
            or old.st_nlink != 1 or old.st_size < RELEASE_LATER_BYTES):
        return None
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError:  # unreadable: the rename frees it, as before
        return None
    st = os.fstat(fd)
    if (st.st_dev, st.st_ino) != (old.st_dev, old.st_ino):  # replaced meanwhile
        os.close(fd)
        return None
    return fd


def _release_later(fd):
    _held.add(fd)
    try:
        # Not a daemon: an exiting interpreter waits for it (milliseconds).
        threading.Thread(target=_close_held, args=(fd,), name="cyjob-release").start()
    except RuntimeError:  # no new thread at interpreter exit: free it here
        _close_held(fd)


def _close_held(fd):
    # Forget it first: the number may be reused once closed, and a fork in
    # between must not make the child close someone else's descriptor.
    _held.discard(fd)
    os.close(fd)


def _close_held_in_child():
    # A forked child inherits the descriptors but not their closing threads:
    # close them, or the child would keep the replaced files alive.
    for fd in list(_held):
        _held.discard(fd)
        with contextlib.suppress(OSError):
            os.close(fd)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_close_held_in_child)
