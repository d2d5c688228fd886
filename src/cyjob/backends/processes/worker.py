"""The worker process: read a batch, run it, write back its outcome.

A worker owns one end of a socket pair whose other end is the parent's.  It
reads a batch, runs it with ``cyjob._tasks.run_tasks`` and writes back
``(results, error, duration_ns)``.  EOF on its socket means the parent is gone
or done with it: it exits.  Workers are forked by the fork server
(``forkserver.py``), which imports this module before it forks any worker:
it must stay light (no numpy, no thread started at import).
"""

import os
import pickle
import sys
import traceback

from cyjob.backends.processes.wire import SET_SYS_PATH, dumps, recv_msg, send_msg

#: True in a process started by the fork server (nested Parallel calls check it).
IN_WORKER = False
#: The backend name of the call whose batch runs here ("loky",
#: "multiprocessing"...; None if it gave none): nested calls follow joblib's
#: rules for it.
CALLED_AS = None


def _describe(func):
    name = getattr(func, "__qualname__", None) or getattr(func, "__name__", None)
    return name or type(func).__name__


def safe_str(obj):
    """``str(obj)``, or a description if its ``__str__`` (or ``__repr__``) fails:
    formatting a task's exception must never kill the worker."""
    try:
        return str(obj)
    except BaseException:
        pass
    try:
        return f"<{type(obj).__qualname__}: str() failed; repr: {obj!r}>"
    except BaseException:
        return f"<{type(obj).__qualname__}: str() and repr() failed>"


def _format_traceback(exc, chain=True):
    try:
        return "".join(traceback.format_exception(type(exc), exc, exc.__traceback__,
                                                  chain=chain))
    except BaseException:
        return f"{type(exc).__qualname__} (its traceback cannot be formatted)\n"


def _error_reply(exc, kind="task"):
    """What the parent needs to re-raise ``exc``: the exception itself when it
    survives a pickling round trip, its type name and message, and the
    worker-side traceback text.  Never raises, whatever ``exc`` does."""
    import cloudpickle

    text = _format_traceback(exc)
    message = safe_str(exc)
    try:
        blob = cloudpickle.dumps(exc, protocol=5)
        pickle.loads(blob)
    except BaseException as why:
        blob = None
        message += (f" (the exception cannot be sent back as itself: "
                    f"{type(why).__name__}: {safe_str(why)})")
    return (kind, blob, f"{type(exc).__module__}.{type(exc).__qualname__}", message, text)


def _reply(sock, token, flat, results, error, duration):
    if error is not None:
        payload, buffers = dumps((None, _error_reply(error), duration))
    else:
        from cyjob.backends.processes.sharedmem import ResultPickler

        try:
            payload, buffers = dumps((results, None, duration), ResultPickler)
        except BaseException as exc:
            index, culprit = _first_unpicklable(results)
            func = _describe(flat[3 * index])
            reason = culprit if culprit is not None else exc
            text = _format_traceback(reason, chain=False)
            info = ("result", index, func, f"{type(reason).__name__}: {safe_str(reason)}", text)
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
    from cyjob._tasks import run_tasks

    global CALLED_AS
    while True:
        msg = recv_msg(sock)
        if msg is None:
            return
        token, payload, buffers = msg
        if token == SET_SYS_PATH:
            sys.path[:] = pickle.loads(payload)
            continue
        flat = None
        try:
            called_as, flat = pickle.loads(payload, buffers=buffers)
        except BaseException as exc:
            del payload, buffers
            sock_payload, sock_buffers = dumps((None, _error_reply(exc, "load"), 0.0))
            send_msg(sock, token, sock_payload, sock_buffers)
            continue
        del payload, buffers
        CALLED_AS = called_as
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


def worker_main(sock, env, sys_path, cwd, authkey, init):
    """Become a worker: runs in the forked child, never returns.

    ``authkey`` is the parent's multiprocessing authkey (a Manager's proxies
    passed to tasks authenticate with it); ``init`` a pickled
    ``(initializer, initargs)`` to run before the first task, or None.
    """
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
