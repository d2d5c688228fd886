"""Large numpy arrays reach process workers as memory maps, not pickles.

On the caller's side, :class:`TaskPickler` pickles a batch with cloudpickle
and replaces each numpy array larger than ``max_nbytes`` by a reference to a
file: the array is written once per call into the call's temp folder
(``/dev/shm`` when it has room) and every worker maps that file with
``mmap_mode``.  An array that already lives in a file (``np.memmap`` or a
contiguous view of one) is passed by file name and offset: nothing is copied.
Smaller arrays travel as pickle-protocol-5 out-of-band buffers (no copy into
the pickle).

Folders are per call and removed by :meth:`CallMemory.cleanup` when the call
ends (joblib keeps one per call until the interpreter exits); whatever is
left at exit (a call never finished) is removed by :func:`cleanup_all`.

The worker side needs only :func:`open_memmap`; numpy is imported when an
array arrives, never at import.
"""

import mmap
import os
import re
import shutil
import sys
import tempfile
import threading
import weakref

import cloudpickle

from cyjob.exceptions import TempFolderError

SHM_DIR = "/dev/shm"
# /dev/shm is used only with this much room left after the array (joblib's
# threshold): a full tmpfs makes writes fail with SIGBUS in the workers.
SHM_MIN_FREE = 2 * 10**9

_folders: "set[str]" = set()  # live call folders of this process, removed at exit
_swept: "set[str]" = set()  # temp dirs already cleared of dead callers' folders
# A call folder: cyjob_<pid of its process>_<mkdtemp's 8 random characters>.
_FOLDER_NAME = re.compile(r"cyjob_(\d+)_[a-z0-9_]{8}")
_folders_lock = threading.Lock()
_owner_pid = os.getpid()


def open_memmap(filename, dtype, mode, offset, shape, order):
    """Rebuild an array sent by reference (runs in the worker)."""
    import numpy as np

    return np.memmap(filename, dtype=dtype, mode=mode, offset=offset, shape=shape, order=order)


def _free_bytes(path):
    try:
        st = os.statvfs(path)
    except OSError:
        return 0
    return st.f_bavail * st.f_frsize


def _base_memmap(a, np):
    """The ``np.memmap`` that owns ``a``'s memory through its ``.base`` chain,
    or None."""
    obj = a
    while obj is not None:
        if isinstance(obj, np.memmap) and getattr(obj, "_mmap", None) is not None:
            return obj
        obj = getattr(obj, "base", None)
    return None


class CallMemory:
    """Temp files of one call: arrays dumped once, folder removed at the end.

    Parameters
    ----------
    max_nbytes : int or None
        Arrays with more bytes than this are memory-mapped; None disables it.
    temp_folder : str or None
        Where to create the call's folder; None means the JOBLIB_TEMP_FOLDER
        environment variable if set, else /dev/shm when it has room, else
        the system temp dir (joblib's order).
    mmap_mode : {"r", "r+", "c", "w+", None}
        Mode the workers open dumped arrays with; None disables memmapping.
    """

    def __init__(self, max_nbytes, temp_folder, mmap_mode):
        self.max_nbytes = max_nbytes if mmap_mode is not None else None
        self.temp_folder = temp_folder
        # "w+" would truncate the file in every worker: joblib opens dumped
        # arrays "r+" instead.
        self.mmap_mode = "r+" if mmap_mode == "w+" else mmap_mode
        self.folder = None
        self.watched = None  # the folder the fork server was told to remove if we die
        self._dumped = {}  # id(array) -> (weakref to it, reduce tuple)
        self._lock = threading.Lock()

    # -- the caller's side ----------------------------------------------------

    def reduce(self, a, np):
        """A reduce tuple for array ``a``, or NotImplemented to pickle it."""
        if isinstance(a, np.memmap) or (a.base is not None and not a.dtype.hasobject):
            reduced = self._reduce_file_backed(a, np)
            if reduced is not None:
                return reduced
        if (self.max_nbytes is None or a.nbytes <= self.max_nbytes
                or a.dtype.hasobject or type(a) is not np.ndarray and not isinstance(a, np.memmap)):
            return NotImplemented
        key = id(a)
        with self._lock:
            hit = self._dumped.get(key)
            if hit is not None and hit[0]() is a:
                return hit[1]
            reduced = self._dump(a, np)
            try:
                ref = weakref.ref(a)
            except TypeError:
                ref = (lambda a=a: a)
            self._dumped[key] = (ref, reduced)
        return reduced

    def _reduce_file_backed(self, a, np):
        """Pass an array that lives in a file by name, offset and shape."""
        m = _base_memmap(a, np)
        # A copy-on-write map ("c") may differ from its file: send its data.
        if m is None or not m.filename or m.mode == "c":
            return None
        # A file deleted (or cut short) since it was mapped cannot be opened
        # by the workers: send the data instead.
        try:
            if os.stat(m.filename).st_size < m.offset + m.nbytes:
                return None
        except OSError:
            return None
        if a.flags.c_contiguous:
            order = "C"
        elif a.flags.f_contiguous:
            order = "F"
        else:
            return None
        # Where numpy mapped the file: its offset rounded down to a page.
        start = m.offset - m.offset % mmap.ALLOCATIONGRANULARITY
        base_addr = np.frombuffer(m._mmap, dtype=np.uint8).__array_interface__["data"][0]
        offset = start + a.__array_interface__["data"][0] - base_addr
        mode = m.mode
        if mode == "w+":
            mode = "r+"  # re-opening "w+" would truncate the file
        return (open_memmap, (m.filename, a.dtype, mode, offset, a.shape, order))

    def _dump(self, a, np):
        if a.flags.c_contiguous:
            order, flat = "C", a.reshape(-1)
        elif a.flags.f_contiguous:
            order, flat = "F", a.T.reshape(-1)
        else:
            order, flat = "C", np.ascontiguousarray(a).reshape(-1)
        try:
            if self.folder is None:
                self.folder = self._make_folder(a.nbytes)
            fd, path = tempfile.mkstemp(suffix=".mmap", dir=self.folder)
            with os.fdopen(fd, "wb") as f:
                f.write(flat.view(np.uint8).data)
        except OSError as exc:
            where = self.folder or self.temp_folder or "the default temp folder"
            raise TempFolderError(
                exc.errno, f"temp_folder: cannot write a numpy argument of {a.nbytes} bytes "
                f"to {where!r} to memory-map it for the workers ({exc.strerror or exc}); "
                "give a writable temp_folder, or max_nbytes=None to send arrays "
                "pickled") from exc
        return (open_memmap, (path, a.dtype, self.mmap_mode, 0, a.shape, order))

    def _make_folder(self, nbytes):
        base = self.temp_folder
        if base is None:
            # joblib's documented first choice for temp_folder=None.
            base = os.environ.get("JOBLIB_TEMP_FOLDER") or None
        if base is None:
            if os.path.isdir(SHM_DIR) and _free_bytes(SHM_DIR) >= nbytes + SHM_MIN_FREE:
                base = SHM_DIR
            else:
                base = tempfile.gettempdir()
        # "~/scratch" is under the home directory, as joblib reads it (not a
        # folder named "~" in the current directory).
        # (fsdecode: a bytes path, which Parallel accepts, as mkdtemp's
        # str prefix needs.)
        base = os.path.expanduser(os.fsdecode(base))
        os.makedirs(base, exist_ok=True)
        if base not in _swept:
            _swept.add(base)
            remove_dead_callers_folders(base)
        folder = tempfile.mkdtemp(prefix=f"cyjob_{os.getpid()}_", dir=base)
        with _folders_lock:
            _folders.add(folder)
        return folder

    def cleanup(self):
        """Remove the call's folder (the call is over)."""
        with self._lock:
            folder, self.folder = self.folder, None
            self._dumped.clear()
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)
            with _folders_lock:
                _folders.discard(folder)


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # another user's: alive
        return True
    return True


def remove_dead_callers_folders(base):
    """Remove the call folders in ``base`` whose process is gone (a caller
    killed with SIGKILL, and its fork server with it, never removed them).
    A folder whose pid was reused by a live process stays: never guess."""
    try:
        names = os.listdir(base)
    except OSError:
        return
    me = os.getpid()
    for name in names:
        match = _FOLDER_NAME.fullmatch(name)
        if match is None or int(match.group(1)) == me or _pid_alive(int(match.group(1))):
            continue
        path = os.path.join(base, name)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)


def cleanup_all():
    """Remove every call folder this process still has (at exit)."""
    if os.getpid() != _owner_pid:
        return
    with _folders_lock:
        folders = list(_folders)
        _folders.clear()
    for folder in folders:
        shutil.rmtree(folder, ignore_errors=True)


def _forget_after_fork():
    # A forked child must not delete its parent's folders at its exit.
    global _folders_lock, _owner_pid
    _folders.clear()
    _folders_lock = threading.Lock()
    _owner_pid = os.getpid()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_after_fork)


class ResultPickler(cloudpickle.CloudPickler):
    """cloudpickle, with each ``np.memmap`` sent as the plain array it views:
    numpy pickles a memmap of a non-native byte order in native order
    (values kept, ``dtype.byteorder`` lost), a plain array keeps it."""

    def reducer_override(self, obj):
        np = sys.modules.get("numpy")
        if np is not None and isinstance(obj, np.memmap):
            return np.asarray(obj).__reduce_ex__(self.proto)
        return super().reducer_override(obj)


class TaskPickler(ResultPickler):
    """cloudpickle, plus numpy arrays sent by reference to a file when large.

    ``memory`` is the call's :class:`CallMemory` (None: pickle arrays)."""

    memory = None

    def reducer_override(self, obj):
        np = sys.modules.get("numpy")
        if np is not None and self.memory is not None and isinstance(obj, np.ndarray):
            reduced = self.memory.reduce(obj, np)
            if reduced is not NotImplemented:
                return reduced
        return super().reducer_override(obj)
