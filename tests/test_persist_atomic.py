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


def _join_releases():
    atomic.wait_for_releases(timeout=30)
    assert not [t for t in threading.enumerate() if t.name == "cyjob-release"]


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


# -- the sweep of killed dumps' temporary files ------------------------------------

KILLED_DUMP_SCRIPT = r"""
import sys
import numpy as np
from cyjob import dump

a = np.arange(40 * 2**20 // 8, dtype=np.float64)
print("ready", flush=True)
while True:
    dump({"a": a}, sys.argv[1])
"""


def _temps(directory):
    return sorted(n for n in os.listdir(directory) if n.endswith(atomic.TEMP_SUFFIX))


def _age(path, seconds):
    """Make ``path`` look last written ``seconds`` ago."""
    t = time.time() - seconds
    os.utime(path, (t, t))


def _start_dumping(target):
    """A child dumping 40 MB to ``target`` in a loop, once its first
    temporary file exists."""
    import subprocess

    from helpers import child_env

    child = subprocess.Popen([sys.executable, "-c", KILLED_DUMP_SCRIPT, str(target)],
                             stdout=subprocess.PIPE, env=child_env())
    try:
        assert child.stdout.readline() == b"ready\n"
        deadline = time.monotonic() + 60
        while not _temps(target.parent):
            assert time.monotonic() < deadline, "the child never started a dump"
            time.sleep(0.001)
    except BaseException:
        child.kill()
        child.wait(timeout=30)
        child.stdout.close()
        raise
    return child


DUMP_ONCE_SCRIPT = "import sys; from cyjob import dump; dump(int(sys.argv[2]), sys.argv[1])"


def _dump_in_a_new_process(target, version):
    import subprocess

    from helpers import child_env

    subprocess.run([sys.executable, "-c", DUMP_ONCE_SCRIPT, str(target), str(version)],
                   env=child_env(), timeout=60, check=True)


@pytest.mark.timeout(180)
@pytest.mark.skipif(os.name != "posix", reason="POSIX signals")
def test_the_next_program_to_dump_there_sweeps_what_a_sigkilled_dump_left(tmp_path):
    import signal

    target = tmp_path / "model.pkl"
    dump(1, target)
    child = _start_dumping(target)
    try:
        # Stopped mid-dump, its writer alive: nobody touches its file, however old.
        child.send_signal(signal.SIGSTOP)
        time.sleep(0.05)
        (left,) = _temps(tmp_path)
        assert f".{child.pid}." in left
        _age(tmp_path / left, 2 * atomic.SWEEP_FOREIGN_AGE)
        _dump_in_a_new_process(target, 2)
        assert _temps(tmp_path) == [left]
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)  # reaped: a zombie's pid still exists
    finally:
        child.kill()
        child.wait(timeout=30)
        child.stdout.close()
    assert _temps(tmp_path) == [left] and load(target) == 2
    # Its writer dead, but written to moments ago: kept for SWEEP_GRACE.
    _age(tmp_path / left, atomic.SWEEP_GRACE / 2)
    _dump_in_a_new_process(target, 3)
    assert _temps(tmp_path) == [left]
    _age(tmp_path / left, atomic.SWEEP_GRACE + 1)
    _dump_in_a_new_process(target, 4)
    assert _temps(tmp_path) == [] and load(target) == 4


def _dead_pid():
    import subprocess

    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait(timeout=30)
    return child.pid


def test_sweep_rules(tmp_path):
    here = atomic.pid_space()
    other = "0123abcd" if here != "0123abcd" else "89abcdef"
    dead, alive = _dead_pid(), os.getppid()
    names = {
        # name -> (age in s, removed?)
        f".data.pkl.{here}.{dead}.00c0ffee.cyjob-tmp": (60, True),
        f".data.pkl.{here}.{dead}.11c0ffee.cyjob-tmp": (1, False),          # too recent
        f".data.pkl.{here}.{alive}.22c0ffee.cyjob-tmp": (10**6, False),     # writer alive
        f".data.pkl.{here}.{os.getpid()}.33c0ffee.cyjob-tmp": (10**6, False),  # ours
        f".data.pkl.{other}.{dead}.44c0ffee.cyjob-tmp": (600, False),       # NFS, container..
        f".data.pkl.{other}.{alive}.55c0ffee.cyjob-tmp": (7200, True),      # .. silent for 2 h
        f".data.pkl.{dead}.66c0ffee.cyjob-tmp": (600, False),               # an older cyjob's
        f".data.pkl.{dead}.77c0ffee.cyjob-tmp": (7200, True),
        f".other.v2.pkl.{here}.{dead}.88c0ffee.cyjob-tmp": (60, True),      # any target's
        f".data.pkl.{here}.{dead}.99c0ffee.tmp": (10**6, False),            # not ours
        f".data.pkl.{here}.x{dead}.aac0ffee.cyjob-tmp": (10**6, False),
        f".data.pkl.{here}.{dead}.bbc0ffe.cyjob-tmp": (10**6, False),
        f"data.pkl.{here}.{dead}.ccc0ffee.cyjob-tmp": (10**6, False),
        f"..{dead}.ddc0ffee.cyjob-tmp": (10**6, False),                     # no NAME
        "data.pkl.bak": (10**6, False),
    }
    for name, (age, _) in names.items():
        (tmp_path / name).write_bytes(b"x")
        _age(tmp_path / name, age)
    removed = atomic.sweep_temps(str(tmp_path))
    assert sorted(removed) == sorted(n for n, (_, gone) in names.items() if gone)
    assert sorted(os.listdir(tmp_path)) == sorted(n for n, (_, gone) in names.items()
                                                  if not gone)
    assert atomic.sweep_temps(str(tmp_path / "missing")) == []


def _leftover(directory, target_name):
    path = directory / f".{target_name}.{atomic.pid_space()}.{_dead_pid()}.0badf00d.cyjob-tmp"
    path.write_bytes(b"x")
    _age(path, 60)
    return path


def test_dump_sweeps_its_directory_once_a_minute(tmp_path, monkeypatch):
    monkeypatch.setattr(atomic, "_last_sweep", {})
    first = _leftover(tmp_path, "a.pkl")
    dump(1, tmp_path / "a.pkl")
    assert not first.exists()
    second = _leftover(tmp_path, "b.pkl")
    dump(2, tmp_path / "b.pkl")  # within SWEEP_INTERVAL of the last sweep there
    assert second.exists()
    monkeypatch.setattr(atomic, "SWEEP_INTERVAL", 0.0)
    dump(3, tmp_path / "b.pkl")
    assert not second.exists() and load(tmp_path / "b.pkl") == 3


def test_the_sweep_follows_a_link_to_the_target(tmp_path, monkeypatch):
    monkeypatch.setattr(atomic, "_last_sweep", {})
    real = tmp_path / "real"
    real.mkdir()
    link = tmp_path / "link.pkl"
    os.symlink(real / "m.pkl", link)
    leftover = _leftover(real, "m.pkl")
    dump(2, link)
    assert not leftover.exists() and load(link) == 2 and os.path.islink(link)


def test_a_long_file_name_gets_a_temporary_name_that_fits(tmp_path):
    try:
        name_max = os.pathconf(tmp_path, "PC_NAME_MAX")
    except (OSError, ValueError, AttributeError):
        name_max = 255
    for name in ("x" * (name_max - 4) + ".pkl", "é" * ((name_max - 4) // 2) + ".pkl"):
        target = tmp_path / name
        dump({"n": name}, target)
        assert load(target) == {"n": name}
        temp = os.path.basename(atomic.temp_name(str(target)))
        assert len(os.fsencode(temp)) <= name_max
        # A dead writer's temporary file of that target is found by the sweep.
        leftover = tmp_path / temp.replace(f".{os.getpid()}.", f".{_dead_pid()}.")
        leftover.write_bytes(b"x")
        _age(leftover, 60)
        assert atomic.sweep_temps(str(tmp_path)) == [leftover.name]


def test_publish_reuses_its_temporary_names_and_leaves_none(tmp_path):
    for i in range(5):
        atomic.publish(str(tmp_path / f"e{i}"), b"v%d" % i)
    assert sorted(os.listdir(tmp_path)) == [f"e{i}" for i in range(5)]
    assert [(tmp_path / f"e{i}").read_bytes() for i in range(5)] == [b"v%d" % i
                                                                     for i in range(5)]
    # A slot goes back after the write; a failed write returns it too.
    slots = list(atomic._free_slots)
    with pytest.raises(FileNotFoundError):
        atomic.publish(str(tmp_path / "no-such-dir" / "e"), b"x")
    assert sorted(atomic._free_slots) == sorted(slots)


def test_publish_steps_around_a_dead_writers_leftover(tmp_path, monkeypatch):
    # A process that had this pid died between create and rename: its
    # temporary file has the name of one of our slots.  It is not ours to
    # remove (the sweep's rules do that); the write uses a fresh name.
    monkeypatch.setattr(atomic, "_free_slots", [5])
    leftover = tmp_path / f".publish.{atomic.pid_space()}.{os.getpid()}.00000005.cyjob-tmp"
    leftover.write_bytes(b"dead writer's")
    atomic.publish(str(tmp_path / "e"), b"mine")
    assert (tmp_path / "e").read_bytes() == b"mine"
    assert sorted(os.listdir(tmp_path)) == sorted(["e", leftover.name])
    assert atomic._free_slots == [5]


def test_publish_from_many_threads_at_once(tmp_path):
    errors = []

    def writer(k):
        try:
            for i in range(200):
                atomic.publish(str(tmp_path / f"{k}-{i % 20}"), b"%d-%d" % (k, i))
        except Exception as exc:  # pragma: no cover - the assertion shows it
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    assert sorted(os.listdir(tmp_path)) == sorted(f"{k}-{j}" for k in range(4)
                                                  for j in range(20))
    assert all((tmp_path / f"{k}-{j}").read_bytes() == b"%d-%d" % (k, 180 + j)
               for k in range(4) for j in range(20))
