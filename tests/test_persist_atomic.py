"""cyjob.persist.atomic: the crash-safe write under dump, the replaced file
freed off the caller's path, and the sweep of temporary files that killed
writers left behind."""

import os
import sys
import threading
import time

import numpy as np
import pytest

from cyjob import dump, load
from cyjob.persist import atomic

linux_only = pytest.mark.skipif(not os.path.isdir("/proc/self/fd"),
                                reason="reads /proc/self/fd")


def _deleted_fds(path):
    """This process's descriptors open on ``path`` after it was unlinked."""
    found = []
    for name in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{name}")
        except OSError:
            continue
        if target == f"{path} (deleted)":
            found.append(int(name))
    return found


def _join_releases(timeout=30):
    for thread in threading.enumerate():
        if thread.name == "cyjob-release":
            thread.join(timeout)
            assert not thread.is_alive()


def _big_file(path):
    path.write_bytes(os.urandom(4096) * (atomic.RELEASE_LATER_BYTES // 4096))
    return os.stat(path)


@linux_only
def test_replacing_a_large_file_frees_it_on_a_thread(tmp_path, monkeypatch):
    target = tmp_path / "big.pkl"
    old = _big_file(target)
    closed = []
    close = atomic._close_held

    def recording_close(fd):
        st = os.fstat(fd)
        closed.append((st.st_ino, st.st_nlink, threading.current_thread().name))
        close(fd)

    monkeypatch.setattr(atomic, "_close_held", recording_close)
    dump({"new": np.arange(10)}, target)
    np.testing.assert_array_equal(load(target)["new"], np.arange(10))  # in place already
    _join_releases()
    # The old inode, already unlinked by the rename, closed on the helper thread.
    assert closed == [(old.st_ino, 0, "cyjob-release")]
    assert not _deleted_fds(target) and not atomic._held


@linux_only
def test_small_or_linked_files_are_replaced_in_the_callers_thread(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(atomic, "_release_later", calls.append)
    small = tmp_path / "small.pkl"
    small.write_bytes(b"x" * 1000)
    dump(1, small)
    linked = tmp_path / "linked.pkl"
    _big_file(linked)
    os.link(linked, tmp_path / "other-link")  # replacing it frees nothing
    dump(2, linked)
    assert calls == [] and load(small) == 1 and load(linked) == 2
    assert os.path.getsize(tmp_path / "other-link") == atomic.RELEASE_LATER_BYTES


@linux_only
@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_does_not_keep_a_replaced_file(tmp_path, monkeypatch):
    target = tmp_path / "big.pkl"
    _big_file(target)
    gate = threading.Event()
    close = atomic._close_held

    def late_close(fd):
        gate.wait(30)
        close(fd)

    monkeypatch.setattr(atomic, "_close_held", late_close)
    try:
        dump(1, target)
        assert _deleted_fds(target)  # still held: its closing thread waits
        pid = os.fork()
        if pid == 0:  # the child: the descriptor it inherited must be gone
            os._exit(1 if _deleted_fds(target) else 0)
        _, status = os.waitpid(pid, 0)
    finally:
        gate.set()
        _join_releases()
    assert os.waitstatus_to_exitcode(status) == 0
    assert not _deleted_fds(target) and load(target) == 1
