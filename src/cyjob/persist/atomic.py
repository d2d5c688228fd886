"""Crash-safe writes: a temporary file beside the target, renamed into place,
and the sweep of the temporary files that killed writers leave behind."""

import contextlib
import hashlib
import itertools
import os
import secrets
import stat
import threading
import time

#: Every temporary file of a dump ends so (a store may clean up the ones a
#: killed process left behind).
TEMP_SUFFIX = ".cyjob-tmp"
#: A temporary name keeps at most this many bytes of the target's name
#: (NAME_MAX is 255 bytes on common file systems; the rest of it needs ~40).
TEMP_BASE_BYTES = 180
#: The sweep leaves a temporary file alone until it is this old (s), even
#: when its writer is known to be dead.
SWEEP_GRACE = 10.0
#: A temporary file whose writer cannot be looked up from here (another
#: machine, container or boot) is removed once nothing wrote to it for this
#: long (s): a live dump writes its file continuously.
SWEEP_FOREIGN_AGE = 3600.0
#: Replacing a file at least this large lets a helper thread free the old
#: file's pages (bench_persistence: unlinking 200 MB on tmpfs costs ~0.3x
#: writing it; a thread costs ~0.1 ms, the free of 16 MB ~1.5 ms).
RELEASE_LATER_BYTES = 16 << 20


def temp_name(path):
    """A fresh temporary name in ``path``'s directory (so the rename that
    publishes it is atomic: same file system):
    ``.NAME.HOST.PID.RANDOM.cyjob-tmp``, where HOST names the pid space of
    the writer (see :func:`pid_space`) and NAME is the target's name, cut
    to ``TEMP_BASE_BYTES``."""
    directory, base = _split(path)
    if len(base) * 4 > TEMP_BASE_BYTES:  # (a character encodes to 4 bytes at most)
        base = _short(base)
    # RANDOM is a per-process counter from a random start, not a fresh
    # random draw: a cache miss writes one small file, and getrandom plus
    # the pid lookups cost ~3 us of its Python time.  The pid in the name
    # keeps two processes apart (a forked child counts on from the same
    # value), O_EXCL any clash with a dead writer's leftover.
    tag = _writer_tag or _new_writer_tag()
    return f"{directory}.{base}.{tag}{next(_temp_count) & 0xFFFFFFFF:08x}{TEMP_SUFFIX}"


_temp_count = itertools.count(int.from_bytes(secrets.token_bytes(4), "little"))
#: "HOST.PID." of this process (reset in a forked child).
_writer_tag = ""


def _new_writer_tag():
    global _writer_tag
    _writer_tag = f"{pid_space()}.{os.getpid()}."
    return _writer_tag


def _forget_writer_tag():
    global _writer_tag
    _writer_tag = ""


def _split(path):
    """(directory with its trailing separator, or "", name)."""
    if os.altsep is None:  # POSIX: the name is what follows the last os.sep
        directory, sep, base = path.rpartition(os.sep)
        return directory + sep, base
    directory, base = os.path.split(path)
    return (os.path.join(directory, "") if directory else ""), base


def _short(base):
    raw = os.fsencode(base)
    # (a cut inside a character decodes to surrogate escapes, which encode back)
    return base if len(raw) <= TEMP_BASE_BYTES else os.fsdecode(raw[:TEMP_BASE_BYTES])


_pid_spaces: "dict[int, str]" = {}


def pid_space():
    """8 hex digits that name where this process's pid means something:
    this machine, since this boot (Linux: the kernel's boot id, else the
    host name), in this pid namespace."""
    pid = os.getpid()
    tag = _pid_spaces.get(pid)  # per pid: a child may live in a new namespace
    if tag is None:
        try:
            with open("/proc/sys/kernel/random/boot_id") as f:
                ident = [f.read().strip()]
        except OSError:
            ident = [os.uname().nodename if hasattr(os, "uname") else os.environ.get(
                "COMPUTERNAME", "")]
        try:
            ns = os.stat("/proc/self/ns/pid")
            ident.append(f"{ns.st_dev}:{ns.st_ino}")
        except OSError:
            pass
        tag = hashlib.blake2b("\0".join(ident).encode(), digest_size=4).hexdigest()
        _pid_spaces[pid] = tag
    return tag


@contextlib.contextmanager
def atomic_write(path):
    """Yield a raw binary file; when the block ends normally, it replaces
    ``path`` in one ``os.replace``.

    A process killed meanwhile leaves the old ``path`` (or none) and a
    temporary file; any exception removes the temporary file.  Data is not
    fsync'ed (neither joblib nor ``np.save`` does): the rename protects
    against a dying process, not against a dying machine.  A replaced file
    of ``RELEASE_LATER_BYTES`` or more is freed on a short-lived thread
    after the rename (see below).
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


def publish(path, data):
    """Write the bytes-like ``data`` to ``path`` by the protocol of
    :func:`atomic_write` (a temporary file beside it, renamed into place,
    removed on error), with ``os``-level calls only: open, write, close,
    rename.

    For small files a program names itself (a cache's entries): it does not
    follow a symlinked ``path``, keep a replaced file's permissions or free a
    large replaced file on a thread, which cost two ``stat`` calls and a file
    object, a sizeable part of writing a few hundred bytes.

    The temporary name is one of a few this process reuses
    (``.publish.HOST.PID.SLOT``, a slot per write in flight): after the
    rename the directory's cache knows that name as absent, so the next
    create in that directory skips a directory search (~1-2 us on ext4).
    """
    try:
        slot = _free_slots.pop()  # atomic under the GIL: one writer per slot
    except IndexError:
        slot = next(_slot_count)
    try:
        temp = (f"{_split(path)[0]}.publish.{_writer_tag or _new_writer_tag()}{slot:08x}"
                f"{TEMP_SUFFIX}")
        try:
            fd = os.open(temp, _O_NEW, 0o666)
        except FileExistsError:  # a leftover of a dead process that had this pid
            temp = temp_name(path)
            fd = os.open(temp, _O_NEW, 0o666)
        try:
            try:
                view = memoryview(data).cast("B")
                done = os.write(fd, view)
                while done < len(view):  # a write may write less than asked
                    done += os.write(fd, view[done:])
            finally:
                os.close(fd)
            os.replace(temp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temp)
            raise
    finally:
        _free_slots.append(slot)


_O_NEW = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
# publish's temporary-name slots not in use (a forked child's pid makes its
# names differ from its parent's).
_free_slots: "list[int]" = []
_slot_count = itertools.count()


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
_held: "set[int]" = set()


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


def wait_for_releases(timeout=None):
    """Wait until the files that earlier writes replaced are freed (for
    measurements and tests: a caller never needs to)."""
    for thread in threading.enumerate():
        if thread.name == "cyjob-release":
            thread.join(timeout)


def _close_held_in_child():
    # A forked child inherits the descriptors but not their closing threads:
    # close them, or the child would keep the replaced files alive.
    for fd in list(_held):
        _held.discard(fd)
        with contextlib.suppress(OSError):
            os.close(fd)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_close_held_in_child)
    os.register_at_fork(after_in_child=_forget_writer_tag)  # a new pid


# -- sweeping what killed writers left -------------------------------------------

#: dump sweeps the directory it writes to at most this often (s) per
#: process: listing a cache folder of 10,000 entries costs ~6-9 ms.
SWEEP_INTERVAL = 60.0
_last_sweep: "dict[str, float]" = {}


def sweep_beside(path):
    """What ``dump(value, path)`` calls first: :func:`sweep_temps` on the
    directory its temporary file goes to (a symlink's target's), unless this
    process did so in the last ``SWEEP_INTERVAL`` seconds."""
    if os.path.islink(path):
        path = os.path.realpath(path)  # where atomic_write puts the temporary file
    directory = os.path.dirname(os.path.abspath(path))
    now = time.monotonic()
    last = _last_sweep.get(directory)
    if last is not None and now - last < SWEEP_INTERVAL:
        return []
    if len(_last_sweep) >= 1024:
        _last_sweep.clear()
    _last_sweep[directory] = now
    return sweep_temps(directory)


def sweep_temps(directory, now=None):
    """Remove the temporary files in ``directory`` whose writer died.

    A process killed during a dump leaves its ``.NAME.HOST.PID.RANDOM
    .cyjob-tmp`` beside the target; nothing else would ever remove it.  A
    file named so is removed when it is at least ``SWEEP_GRACE`` seconds
    old (by its mtime) and

    - HOST is this process's :func:`pid_space` (same machine, boot and pid
      namespace) and no process PID exists (a zombie still counts, a pid
      reused by another process keeps the file: when in doubt, keep it), or
    - HOST is another (a file shared over NFS, a container, a previous boot;
      or an older cyjob's name without HOST) and nothing wrote to it for
      ``SWEEP_FOREIGN_AGE`` seconds.

    Returns the names removed.  Never raises for a file it cannot read or
    remove (another process may be sweeping too).
    """
    here = pid_space()
    now = time.time() if now is None else now
    removed = []
    try:
        entries = os.scandir(directory)
    except OSError:
        return removed
    # (scandir's iteration may fail midway too: what was swept stays swept)
    with entries, contextlib.suppress(OSError):
        for entry in entries:
            name = entry.name
            if not (name.startswith(".") and name.endswith(TEMP_SUFFIX)):
                continue
            try:
                mtime = entry.stat(follow_symlinks=False).st_mtime
            except OSError:
                continue
            if not is_stale_temp(name, mtime, now, here):
                continue
            with contextlib.suppress(OSError):
                os.unlink(entry.path)
                removed.append(name)
    return removed


def is_stale_temp(name, mtime, now, here=None):
    """Whether the file ``name`` (modified at ``mtime``) is a temporary file
    of a writer that died, by the rule :func:`sweep_temps` states: the one
    rule for every sweep of cyjob's temporary files (``here``: this
    process's :func:`pid_space`, if the caller has it at hand)."""
    if not (name.startswith(".") and name.endswith(TEMP_SUFFIX)):
        return False
    writer = _writer(name[1:-len(TEMP_SUFFIX)])
    age = now - mtime
    if writer is None or age < SWEEP_GRACE:
        return False
    space, pid = writer
    if space == (pid_space() if here is None else here):
        return pid != os.getpid() and not _exists(pid)
    return age >= SWEEP_FOREIGN_AGE


def _writer(body):
    """(pid space or None, pid) from a temporary name without its leading
    dot and suffix (``NAME.HOST.PID.RANDOM``, or an older cyjob's
    ``NAME.PID.RANDOM``), or None if it is not one."""
    parts = body.rsplit(".", 3)
    if len(parts) == 4 and parts[0] and len(parts[1]) == 8 and _is_hex(parts[1]):
        _, space, pid, rand = parts
    else:
        parts = body.rsplit(".", 2)
        if len(parts) != 3 or not parts[0]:
            return None
        space = None
        _, pid, rand = parts
    if not (pid.isdigit() and pid.isascii() and len(rand) == 8 and _is_hex(rand)):
        return None
    return space, int(pid)


def _is_hex(text):
    return all(c in "0123456789abcdef" for c in text)


def _exists(pid):
    if os.name != "posix":
        return True  # Windows: os.kill(pid, 0) would terminate the process
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, OSError):
        return True  # another user's process, or unknowable: keep the file
    return True
