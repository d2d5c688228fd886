"""The worker side of the process pool: message framing, the fork server and
the worker loop.

This module is imported by the fork server before it forks any worker, so it
must stay light: no numpy, no thread started at import.

Processes
---------
* The **fork server** is started once per parent process with
  ``subprocess.Popen`` (fork + exec: a fresh interpreter, safe whatever threads
  the parent runs).  It imports cyjob and cloudpickle once, then forks a
  worker whenever the parent asks, so a new worker is ready in a few ms
  instead of the ~150 ms of a fresh interpreter (workers killed after Ctrl-C,
  a time-out or a crash are replaced at that price).  It is single-threaded,
  which is what makes ``fork`` safe there.  It reaps its children and tells
  the parent their exit status (the parent is not their parent and could not
  ``waitpid`` them), and kills them on request (race-free: a pid it has not
  reaped yet cannot have been reused).
* A **worker** owns one end of a socket pair whose other end is the
  parent's.  It reads a batch, runs it with ``cyjob._core.run_tasks`` and
  writes back ``(results, error, duration_ns)``.  EOF on its socket means
  the parent is gone or done with it: it exits.

Framing
-------
A message is a header ``(token, payload length, number of buffers)``, the
buffer lengths, the pickle payload, then the pickle-protocol-5 out-of-band
buffers, so large numpy arrays cross without being copied into the pickle.
"""

import io
import os
import pickle
import select
import signal
import socket
import struct
import sys
import time
import traceback

_HEADER = struct.Struct("<QQI")
_LENGTH = struct.Struct("<Q")
# Buffers smaller than this travel inside the pickle: a separate write per
# buffer costs more than copying a few KB.
OUT_OF_BAND_MIN = 64 * 1024
# Above this, the payload is written on its own rather than joined to its
# header (joining copies it).
_JOIN_MAX = 256 * 1024

#: True in a process started by the fork server (nested Parallel calls check it).
IN_WORKER = False


# --------------------------------------------------------------------------
# framing


def send_msg(sock, token, payload, buffers=()):
    """Write one message: ``payload`` (bytes-like) and its out-of-band buffers."""
    n = len(buffers)
    head = _HEADER.pack(token, len(payload), n)
    if n:
        views = [memoryview(b).cast("B") for b in buffers]
        head += b"".join(_LENGTH.pack(v.nbytes) for v in views)
    else:
        views = ()
    if len(payload) <= _JOIN_MAX:
        sock.sendall(head + payload)
    else:
        sock.sendall(head)
        sock.sendall(payload)
    for view in views:
        sock.sendall(view)


def _recv_exact(sock, n):
    """``n`` bytes from ``sock`` in a fresh bytearray; None at EOF."""
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        k = sock.recv_into(view[got:])
        if k == 0:
            return None
        got += k
    return buf


def recv_msg(sock):
    """Read one message; return ``(token, payload, buffers)``, or None at EOF."""
    head = _recv_exact(sock, _HEADER.size)
    if head is None:
        return None
    token, size, n = _HEADER.unpack(head)
    lengths = ()
    if n:
        raw = _recv_exact(sock, _LENGTH.size * n)
        if raw is None:
            return None
        lengths = [_LENGTH.unpack_from(raw, i * _LENGTH.size)[0] for i in range(n)]
    payload = _recv_exact(sock, size) if size else bytearray()
    if payload is None:
        return None
    buffers = []
    for length in lengths:
        buf = _recv_exact(sock, length)
        if buf is None:
            return None
        buffers.append(buf)
    return token, payload, buffers


def dumps(obj, pickler_cls=None, memory=None):
    """Pickle with protocol 5; return ``(payload, out_of_band_buffers)``.

    ``pickler_cls`` defaults to cloudpickle's; ``memory`` is set on the
    pickler (the caller's large-array policy, see ``_sharedmem``)."""
    import cloudpickle  # not at import: the parent loads it while the fork server boots

    buffers = []

    def keep(buf):
        # False (None) sends the buffer out of band; True keeps it in-band.
        if buf.raw().nbytes < OUT_OF_BAND_MIN:
            return True
        buffers.append(buf)
        return None

    out = io.BytesIO()
    pickler = (pickler_cls or cloudpickle.CloudPickler)(out, protocol=5, buffer_callback=keep)
    if memory is not None:
        pickler.memory = memory
    pickler.dump(obj)
    return out.getbuffer(), buffers


# --------------------------------------------------------------------------
# the worker


def _describe(func):
    name = getattr(func, "__qualname__", None) or getattr(func, "__name__", None)
    return name or type(func).__name__


def _error_reply(exc, kind="task"):
    """What the parent needs to re-raise ``exc``: the exception itself when it
    survives a pickling round trip, its type name and message, and the
    worker-side traceback text."""
    import cloudpickle

    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    try:
        blob = cloudpickle.dumps(exc, protocol=5)
        pickle.loads(blob)
    except BaseException:
        blob = None
    return (kind, blob, f"{type(exc).__module__}.{type(exc).__qualname__}", str(exc), text)


def _reply(sock, token, flat, results, error, duration):
    if error is not None:
        payload, buffers = dumps((None, _error_reply(error), duration))
    else:
        from cyjob.backends._sharedmem import ResultPickler

        try:
            payload, buffers = dumps((results, None, duration), ResultPickler)
        except BaseException as exc:
            index, culprit = _first_unpicklable(results)
            func = _describe(flat[3 * index])
            reason = culprit if culprit is not None else exc
            text = "".join(traceback.format_exception(
                type(reason), reason, reason.__traceback__, chain=False))
            info = ("result", index, func, f"{type(reason).__name__}: {reason}", text)
            payload, buffers = dumps((None, info, duration))
    send_msg(sock, token, payload, buffers)


def _first_unpicklable(results):
    import cloudpickle

    for i, r in enumerate(results):
        try:
            cloudpickle.dumps(r, protocol=5)
        except BaseException as exc:
            return i, exc
    return 0, None


def worker_loop(sock):
    """Run batches from ``sock`` until EOF."""
    from cyjob._core import run_tasks

    while True:
        msg = recv_msg(sock)
        if msg is None:
            return
        token, payload, buffers = msg
        flat = None
        try:
            flat = pickle.loads(payload, buffers=buffers)
        except BaseException as exc:
            del payload, buffers
            sock_payload, sock_buffers = dumps((None, _error_reply(exc, "load"), 0.0))
            send_msg(sock, token, sock_payload, sock_buffers)
            continue
        del payload, buffers
        results, error, duration = run_tasks(flat)
        _reply(sock, token, flat, results, error, duration)
        # Drop the batch now: its memmaps must not outlive the call (their
        # files are deleted when it ends) and its arguments may be large.
        del flat, results, error
        # Output of print() in a task must not sit in a buffer of a worker
        # that may be killed before it exits.
        _flush()


def _flush():
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass


def _worker_main(sock, env, sys_path, cwd, authkey, init):
    """Become a worker: runs in the forked child, never returns."""
    global IN_WORKER
    code = 0
    try:
        IN_WORKER = True
        import multiprocessing

        multiprocessing.current_process().authkey = authkey
        os.environ.clear()
        os.environ.update(env)
        sys.path[:] = sys_path
        if cwd is not None:
            try:
                os.chdir(cwd)
            except OSError:
                pass
        import faulthandler

        faulthandler.enable()  # a segfaulting task leaves its traceback on stderr
        if init is not None:
            # Parallel(initializer=f, initargs=args), as joblib's process backends.
            initializer, initargs = pickle.loads(init)
            initializer(*initargs)
        worker_loop(sock)
    except (BrokenPipeError, ConnectionResetError):
        pass  # the parent is gone: nothing to report to anyone
    except BaseException:
        traceback.print_exc()
        code = 1
    finally:
        _flush()
        os._exit(code)


# --------------------------------------------------------------------------
# the fork server


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

    Requests: ``("spawn", wid, env, sys_path, cwd, authkey, init)`` with the worker's socket
    attached, ``("kill", wid, signum)``.  Replies: ``("spawned", wid, pid)``,
    ``("exited", wid, exit_code)`` (a negative code is a signal).  EOF from
    the parent: wait a moment for the workers to leave, kill the rest, exit.
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

    # What every worker needs, loaded once here and shared copy-on-write.
    import multiprocessing  # noqa: F401  (workers set its authkey)

    import cloudpickle  # noqa: F401

    import cyjob  # noqa: F401
    import cyjob._core  # noqa: F401
    import cyjob.backends._sharedmem  # noqa: F401

    pids = {}  # wid -> pid, until reaped
    wids = {}  # pid -> wid

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
                _worker_main(socket.socket(fileno=fds[0]), env, sys_path, cwd, authkey, init)
            os.close(fds[0])
            pids[wid] = pid
            wids[pid] = wid
            _send_ctrl(ctrl, ("spawned", wid, pid))
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
    ctrl.close()  # (left open, `python -X dev` reports it as a ResourceWarning)
