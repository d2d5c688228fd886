"""The fork server: forks worker processes on the parent's request.

It is started once per parent process with ``subprocess.Popen`` (fork + exec:
a fresh interpreter, safe whatever threads the parent runs).  It imports
cyjob and cloudpickle once, then forks a worker whenever the parent asks, so a
new worker is ready in a few ms instead of the ~150 ms of a fresh interpreter
(workers killed after Ctrl-C, a time-out or a crash are replaced at that
price).  It is single-threaded, which is what makes ``fork`` safe there.  It
reaps its children and tells the parent their exit status (the parent is not
their parent and could not ``waitpid`` them), and kills them on request
(race-free: a pid it has not reaped yet cannot have been reused).
"""

import os
import pickle
import select
import signal
import socket
import sys
import threading
import time

# The directory holding the cyjob package (src/ in a checkout).
_CYJOB_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))))

# A server started ahead of its pool (start_early): (pid, Popen, our socket).
_early = None
_early_lock = threading.Lock()


def start_server():
    """Start a fork server for this process: ``(Popen, our end of its
    control socket)``."""
    import subprocess

    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    code = (f"import sys; sys.path.insert(0, {_CYJOB_ROOT!r}); "
            "from cyjob.backends.processes.forkserver import forkserver_main; "
            f"forkserver_main({theirs.fileno()})")
    # The interpreter's own flags (-W, -X, -O...) carry over, as with
    # multiprocessing's spawn.
    flags = subprocess._args_from_interpreter_flags()
    try:
        server = subprocess.Popen([sys.executable, *flags, "-c", code],
                                  pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL)
    except BaseException:
        ours.close()
        raise
    finally:
        theirs.close()
    return server, ours


def start_early():
    """Start the fork server now, for the pool made next in this process
    (``take_early``): it boots (~0.1-0.3 s, in its own process) while this
    one imports what the pool needs.  The default backend's cold start."""
    global _early
    with _early_lock:
        if _early is None or _early[0] != os.getpid():
            _early = (os.getpid(), *start_server())


def take_early():
    """The server ``start_early`` started in this process, if any, as
    ``(Popen, socket)``; the caller owns it from now on."""
    global _early
    with _early_lock:
        early, _early = _early, None
    if early is None or early[0] != os.getpid():
        return None
    return early[1], early[2]

def _send_ctrl(ctrl, msg):
    try:
        ctrl.send(pickle.dumps(msg))
    except OSError:
        pass


def _exit_code(status):
    if os.WIFSIGNALED(status):
        return -os.WTERMSIG(status)
    if os.WIFEXITED(status):
        return os.WEXITSTATUS(status)
    return status


def forkserver_main(ctrl_fd):
    """Serve fork requests from the parent on ``ctrl_fd`` (a SEQPACKET socket).

    Requests: ``("spawn", wid, env, sys_path, cwd, authkey, init)`` with the
    worker's socket attached, ``("kill", wid, signum)``, ``("folder", path,
    watch)`` (a temp folder of the parent's, to remove if it dies), ``("bye",)``
    (the parent shuts down).  Replies: ``("spawned", wid, pid)``, ``("exited",
    wid, exit_code)`` (a negative code is a signal).  EOF from the parent: wait
    a moment for the workers to leave, kill the rest, remove the folders if
    the parent died without "bye", exit.
    """
    # Ctrl-C in a terminal reaches the whole process group: the parent decides
    # what to stop, not us.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    ctrl = socket.socket(fileno=ctrl_fd)
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *args: None)

    from cyjob.backends.processes.worker import worker_main

    # What every worker needs, loaded once here and shared copy-on-write.
    import multiprocessing  # noqa: F401  (workers set its authkey)

    import cloudpickle  # noqa: F401

    import cyjob  # noqa: F401
    import cyjob._tasks  # noqa: F401
    import cyjob.backends.processes.sharedmem  # noqa: F401

    pids = {}  # wid -> pid, until reaped
    wids = {}  # pid -> wid
    folders = set()  # the parent's temp folders in use
    said_bye = False

    def reap():
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            wid = wids.pop(pid, None)
            if wid is not None:
                pids.pop(wid, None)
                _send_ctrl(ctrl, ("exited", wid, _exit_code(status)))

    while True:
        try:
            ready, _, _ = select.select([ctrl, wake_r], [], [])
        except InterruptedError:
            continue
        if wake_r in ready:
            try:
                while os.read(wake_r, 4096):
                    pass
            except BlockingIOError:
                pass
            reap()
        if ctrl not in ready:
            continue
        try:
            data, fds, _, _ = socket.recv_fds(ctrl, 1 << 20, 1)
        except OSError:
            data, fds = b"", []
        if not data:
            break
        msg = pickle.loads(data)
        if msg[0] == "spawn":
            _, wid, env, sys_path, cwd, authkey, init = msg
            pid = os.fork()
            if pid == 0:
                signal.set_wakeup_fd(-1)
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                os.close(wake_r)
                os.close(wake_w)
                ctrl.close()
                os.set_inheritable(fds[0], False)
                worker_main(socket.socket(fileno=fds[0]), env, sys_path, cwd, authkey, init)
            os.close(fds[0])
            pids[wid] = pid
            wids[pid] = wid
            _send_ctrl(ctrl, ("spawned", wid, pid))
        elif msg[0] == "folder":
            (folders.add if msg[2] else folders.discard)(msg[1])
        elif msg[0] == "bye":
            said_bye = True
        elif msg[0] == "kill":
            for fd in fds:
                os.close(fd)
            pid = pids.get(msg[1])
            if pid is not None:
                try:
                    os.kill(pid, msg[2])
                except ProcessLookupError:
                    pass

    # The parent is gone or shutting down: it closed the workers' sockets
    # first, so idle workers are leaving; give them a moment, then kill.
    deadline = time.monotonic() + 1.0
    while pids and time.monotonic() < deadline:
        reap()
        time.sleep(0.01)
    for pid in list(wids):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    while wids:
        try:
            pid, _ = os.waitpid(-1, 0)
        except ChildProcessError:
            break
        wids.pop(pid, None)
    if not said_bye:
        # The parent died (SIGKILL, say): nobody else will remove its folders.
        import shutil

        for folder in folders:
            shutil.rmtree(folder, ignore_errors=True)
    ctrl.close()  # (left open, `python -X dev` reports it as a ResourceWarning)
