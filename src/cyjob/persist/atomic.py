"""Crash-safe writes: a temporary file beside the target, renamed into place."""

import contextlib
import os
import secrets

#: Every temporary file of a dump ends so (a store may clean up the ones a
#: killed process left behind).
TEMP_SUFFIX = ".cyjob-tmp"


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
    try:
        with open(fd, "wb", buffering=0) as file:
            try:
                # A file replaced keeps its permissions, as one rewritten in place would.
                os.fchmod(fd, os.stat(path).st_mode & 0o7777)
            except (FileNotFoundError, AttributeError):
                pass
            yield file
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
