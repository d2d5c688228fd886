"""cyjob.Memory's single-flight lock file, kept open by the store: threads
exclude each other through their own descriptions of it, a miss opens no
file for its lock, a forked child keeps none of the parent's descriptions
(so a SIGKILLed computer's lock goes even while its child lives), and a lock
file removed by hand is replaced."""

import fcntl
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

import cyjob
from cyjob.cache import locks
from helpers import child_env

pytestmark = pytest.mark.skipif(not locks.OFD_LOCKS, reason="Linux OFD locks only")


def _store(tmp_path):
    return cyjob.Memory(tmp_path, verbose=0).store_backend


def _fd_targets():
    """{descriptor: what it is open on} for this process."""
    out = {}
    for name in os.listdir("/proc/self/fd"):
        try:
            out[int(name)] = os.readlink("/proc/self/fd/" + name)
        except OSError:
            pass  # (listdir's own descriptor, closed by now)
    return out


def _lock_fds(lock_path):
    """This process's descriptors open on ``lock_path``."""
    return sorted(fd for fd, target in _fd_targets().items() if target == str(lock_path))


def _held_by_someone(lock_path, slot):
    """Whether another open description holds byte ``slot`` of the file."""
    fd = os.open(lock_path, os.O_RDWR)
    try:
        fcntl.fcntl(fd, fcntl.F_OFD_SETLK,
                    locks._FLOCK.pack(fcntl.F_WRLCK, os.SEEK_SET, slot, 1, 0))
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # (drops the probe's lock, if it got it)
    return False


def test_threads_exclude_each_other_through_the_pool(tmp_path):
    store = _store(tmp_path)
    path = store.entry_path("f", "v", "k")
    first = store.lock_at(path)
    assert first.acquire()
    results = []

    def other():
        lock = store.lock_at(path)
        results.append(lock.acquire(blocking=False))
        if results[-1]:
            lock.release()

    t = threading.Thread(target=other)
    t.start()
    t.join(10)
    assert results == [False]  # the same process, another thread: excluded
    first.release()
    t = threading.Thread(target=other)
    t.start()
    t.join(10)
    assert results == [False, True]


def test_a_miss_opens_no_lock_file(tmp_path):
    mem = cyjob.Memory(tmp_path, verbose=0)
    f = mem.cache(lambda x: x)
    f(0)
    lock_path = tmp_path / "cyjob" / ".lock"
    opened = _lock_fds(lock_path)
    assert len(opened) == 1  # the pool's one idle description
    for i in range(1, 50):
        assert f(i) == i
    assert _lock_fds(lock_path) == opened  # reused, not reopened


def test_the_lock_is_on_the_store_file_and_released(tmp_path):
    store = _store(tmp_path)
    lock = store.lock_at(store.entry_path("f", "v", "k"))
    lock.acquire()
    lock_path = os.path.join(store.location, ".lock")
    assert _held_by_someone(lock_path, lock.slot)
    lock.release()
    assert not _held_by_someone(lock_path, lock.slot)


def test_a_removed_lock_file_is_replaced(tmp_path, monkeypatch):
    # The cache folder removed by hand: locks must go to the file that other
    # processes now open, not to the removed one the pool still holds.
    monkeypatch.setattr(locks, "RECHECK_SECONDS", 0.0)
    store = _store(tmp_path)
    path = store.entry_path("f", "v", "k")
    lock = store.lock_at(path)
    lock.acquire()
    lock.release()
    lock_path = os.path.join(store.location, ".lock")
    os.unlink(lock_path)
    lock = store.lock_at(path)
    lock.acquire()
    try:
        assert os.path.exists(lock_path)
        assert _held_by_someone(lock_path, lock.slot)
    finally:
        lock.release()
    assert len(_lock_fds(lock_path)) == 1
    assert not [t for t in _fd_targets().values() if t == lock_path + " (deleted)"]


def test_a_forked_child_keeps_no_lock_descriptor(tmp_path):
    mem = cyjob.Memory(tmp_path, verbose=0)
    f = mem.cache(lambda x: x)
    f(1)
    lock_path = tmp_path / "cyjob" / ".lock"
    assert _lock_fds(lock_path)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report its descriptors on the lock file, use the cache
        try:
            os.close(r)
            n = len(_lock_fds(lock_path))
            ok = f(2) == 2 and f(1) == 1
            os.write(w, b"%d %d" % (n, ok))
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r) as pipe:
        report = pipe.read()
    os.waitpid(pid, 0)
    assert report == "0 1"
    assert f(3) == 3  # the parent's pool still works


_COMPUTER = textwrap.dedent("""
    import os, sys, time
    import cyjob
    mem = cyjob.Memory(sys.argv[1], verbose=0)
    MODE = sys.argv[3]

    def compute(key):
        if MODE == "fork":
            child = os.fork()
            if child == 0:  # a helper the computation started: it outlives it
                null = os.open(os.devnull, os.O_WRONLY)
                os.dup2(null, 1)  # (not the test's pipes: they would stay open)
                os.dup2(null, 2)
                time.sleep(60)
                os._exit(0)
            with open(os.path.join(sys.argv[2], "child.tmp"), "w") as f:
                f.write(str(child))
            os.replace(os.path.join(sys.argv[2], "child.tmp"),
                       os.path.join(sys.argv[2], "child"))
            time.sleep(60)
        return key * 2

    print("OK", mem.cache(compute)(21))
""")


def test_sigkilled_computer_with_a_live_child_is_taken_over(tmp_path):
    # The computing process forked a helper, then was SIGKILLed: the waiter
    # takes over at once, as the child closed its copy of the lock file's
    # description at fork (a copy would keep the dead computer's lock until
    # the child exits).
    script = tmp_path / "computer.py"
    script.write_text(_COMPUTER)
    marks = tmp_path / "marks"
    marks.mkdir()

    def spawn(mode):
        return subprocess.Popen(
            [sys.executable, str(script), str(tmp_path / "cache"), str(marks), mode],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=child_env())

    computer = spawn("fork")
    waiter = child = None
    try:
        deadline = time.monotonic() + 30
        while not (marks / "child").exists():
            assert time.monotonic() < deadline and computer.poll() is None
            time.sleep(0.02)
        child = int((marks / "child").read_text())
        waiter = spawn("wait")
        time.sleep(0.5)
        assert waiter.poll() is None  # it waits for the computer's result
        computer.send_signal(signal.SIGKILL)
        computer.wait(10)
        t0 = time.monotonic()
        out, err = waiter.communicate(timeout=30)
        assert waiter.returncode == 0, err
        assert out.strip() == "OK 42"
        assert time.monotonic() - t0 < 10
        os.kill(child, 0)  # (the helper was alive all along)
    finally:
        for proc in (computer, waiter):
            if proc is not None:
                if proc.poll() is None:
                    proc.kill()
                proc.communicate(timeout=30)
        if child is not None:
            try:
                os.kill(child, signal.SIGKILL)
            except ProcessLookupError:
                pass
