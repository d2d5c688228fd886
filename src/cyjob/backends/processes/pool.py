"""The pool of worker processes behind the "processes" backend.

* One pool per parent process, started on first use, reused by every call and
  every ``Parallel``, stopped at exit (``atexit``) and forgotten in a forked
  child (which builds its own if it needs one).
* Workers come from a **fork server** (see ``forkserver.py``): a fresh
  interpreter started with fork + exec that preloads cyjob and cloudpickle,
  then forks workers on request.  Plain ``fork`` of the caller is not safe:
  cyjob's own worker threads (and the user's, and BLAS's) may hold locks at
  the moment of the fork, which the child would inherit locked forever, and
  CPython 3.12+ warns on every fork of a threaded process.  The fork server is
  single-threaded, so forking there is safe, and cheaper than ``spawn``: a
  replacement for a killed worker is ready in a few ms instead of the
  ~150 ms of a fresh interpreter.
* Each worker talks to the parent over its own socket pair.  A job (a batch
  pickled once by the executor) goes to an idle worker, else waits in the
  pool's queue.  A job expected to be short may also be queued on a worker
  that is busy with one job (**pipelining**): that worker starts it the moment
  it finishes, without waiting for this process to be scheduled and take the
  GIL to send it (a round trip of 0.1-5 ms on a loaded machine, per batch).
  Longer jobs never wait behind another job: an idle worker would be better.
* One I/O thread waits on every worker socket and the fork server's socket
  with ``epoll``; it decodes results, calls ``batch.call.batch_done`` and
  keeps freed workers fed.  The fork server tells it which worker exited and
  how, so a death is reported with its exit code or signal.

Writes happen without the pool's lock (a large one blocks until the worker
reads it).  Each worker has an outbox; whichever thread finds it idle becomes
its only writer until it is empty, so jobs reach a worker in the order they
were given to it.
"""

import atexit
import itertools
import multiprocessing
import os
import pickle
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import deque

from cyjob.backends.processes import forkserver, wire
from cyjob.backends.processes.worker import safe_str
from cyjob.exceptions import (
    PoolShutdownError, TerminatedWorkerError, WorkerError, chain_remote_traceback,
)

__all__ = ["get_pool", "shutdown_pool", "describe_exit"]

# A worker's socket can reach EOF before the fork server's note of its exit
# status arrives (or the other way round): wait this long for the other one
# before reporting the death with what is known.
_DEATH_GRACE_S = 2.0
# Jobs expected to run shorter than this may be queued on a busy worker.  A
# round trip through this process costs 0.1-5 ms (5 ms when the GIL is busy);
# a job behind a 20 ms one waits at most that (bench_processes.py, 2 ms tasks).
PIPELINE_MAX_NS = 20e6
# Jobs given to one worker at a time, at most.
PIPELINE_DEPTH = 2
# Only jobs this small are pipelined: they fit in the socket's buffer, so
# writing one never blocks on a worker that is busy.
PIPELINE_MAX_BYTES = 64 * 1024
# Workers that died in a row before sending back any result: past this many,
# workers die as they start (an initializer that raises, a broken
# environment) and replacing each at once would fork them in a tight loop
# for as long as the pool is idle.  The pool stops replacing them until a
# job is submitted again.
MAX_FAILED_STARTS = 4


def _worker_sys_path(path):
    """``(cwd, path)`` for a worker: the caller's ``sys.path`` with "" (the
    current directory) made absolute."""
    try:
        cwd = os.getcwd()
    except OSError:  # deleted: the workers stay in the fork server's
        cwd = None
    return cwd, [cwd if p == "" else p for p in path if cwd or p]


def describe_exit(code):
    """'exit code 3' / 'signal 9 (SIGKILL)...' for a returncode-style ``code``."""
    if code is None:
        return "an unknown exit status"
    if code >= 0:
        return f"exit code {code}"
    try:
        name = signal.Signals(-code).name
    except ValueError:
        name = "unknown"
    text = f"signal {-code} ({name})"
    if -code == signal.SIGKILL:
        text += ", possibly from the out-of-memory killer"
    elif -code == signal.SIGSEGV:
        text += ", a segmentation fault"
    return text


def tasks_text(batch):
    if batch.size == 1:
        return f"task {batch.start}"
    return f"tasks {batch.start}-{batch.start + batch.size - 1}"


class Job:
    """A batch pickled for the workers."""

    __slots__ = ("batch", "payload", "buffers", "token", "path", "sent", "undelivered")

    def __init__(self, batch, payload, buffers, token):
        self.batch = batch
        self.payload = payload
        self.buffers = buffers
        self.token = token
        self.sent = False       # written whole to its worker's socket
        self.undelivered = 0    # workers that died before it reached them
        # The caller's sys.path when it was pickled: a module found on an
        # entry added since the worker started must be importable there too.
        self.path = tuple(sys.path)

    def pipelinable(self):
        """Short and small enough to wait on a busy worker.  Never for a call
        returning results as they complete: a batch queued behind a slow one
        would come back after it, not when it could have run elsewhere."""
        if len(self.payload) > PIPELINE_MAX_BYTES or self.buffers or not self.batch.call.ordered:
            return False
        return self.expected_ns() < PIPELINE_MAX_NS

    def expected_ns(self):
        sizer = self.batch.call.sizer
        if sizer.n_observed == 0:
            return float("inf")
        return sizer.ns_per_task * self.batch.size


class _Worker:
    __slots__ = ("wid", "sock", "fd", "pid", "key", "jobs", "outbox", "sending", "eof",
                 "code", "exited", "deadline", "doomed", "retired", "closed", "path", "served")

    def __init__(self, wid, sock, key, path):
        self.wid = wid
        self.path = path        # the caller's sys.path it was last given
        self.sock = sock
        self.fd = sock.fileno()
        self.pid = None
        self.key = key
        self.jobs = deque()     # given to it, in order; the first one is running
        self.outbox = deque()   # given to it, not written yet
        self.sending = False    # a thread is writing its outbox
        self.eof = False        # its socket reached EOF
        self.code = None        # exit code, once the fork server reaped it
        self.exited = False
        self.deadline = None    # when to stop waiting for EOF / exit status
        self.doomed = False     # killed on purpose (its call was aborted)
        self.retired = False    # leaves once idle (the pool was resized)
        self.closed = False
        self.served = False     # it has sent back a result: it started fine


class _Pool:
    """Worker processes, their fork server, and the I/O thread."""

    def __init__(self):
        self.pid = os.getpid()
        self.lock = threading.RLock()
        self.workers = {}        # wid -> _Worker, every worker not yet gone
        self.by_fd = {}          # socket fd -> _Worker, sockets still open
        self.active = []         # workers that take new jobs
        self.queue = deque()     # jobs waiting for a worker
        self.to_drain = deque()  # workers whose outbox a thread must write
        self.target = (0, None)  # (n_workers, key: thread limits, initializer) of the last call
        self.env = None
        self.init = None         # the pickled (initializer, initargs) new workers run
        self.failed_starts = 0   # workers dead in a row before any result (MAX_FAILED_STARTS)
        self.closed = False
        self.at_exit = False     # shut down by the interpreter's exit
        self._wids = itertools.count(1)
        self._tokens = itertools.count(1)
        self.epoll = select.epoll()
        self.wake_r, self.wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.epoll.register(self.wake_r, select.EPOLLIN)
        self._start_server()
        self.thread = threading.Thread(target=self._io_loop, name="cyjob-process-io",
                                       daemon=True)
        self.thread.start()

    # -- fork server -----------------------------------------------------------

    def _start_server(self):
        started = forkserver.take_early() or forkserver.start_server()
        self.server, self.ctrl = started
        self.epoll.register(self.ctrl.fileno(), select.EPOLLIN)

    def _ctrl_send(self, msg, fds=()):
        data = pickle.dumps(msg)
        if fds:
            socket.send_fds(self.ctrl, [data], list(fds))
        else:
            self.ctrl.send(data)

    # -- workers (lock held) ------------------------------------------------------

    def _spawn(self):
        """Ask for a worker of the current target.  Its socket works at once:
        a job written before the fork waits in the socket's buffer."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        w = _Worker(next(self._wids), ours, self.target[1], tuple(sys.path))
        cwd, path = _worker_sys_path(w.path)
        # multiprocessing's authkey: Manager proxies passed to tasks
        # authenticate with it (the fork server is a fresh interpreter).
        authkey = bytes(multiprocessing.current_process().authkey)
        try:
            self._ctrl_send(("spawn", w.wid, self.env, path, cwd, authkey, self.init),
                            [theirs.fileno()])
        except OSError as exc:
            ours.close()
            raise TerminatedWorkerError(
                f"cannot start a worker process: cyjob's fork server is gone ({exc})") from exc
        finally:
            theirs.close()
        self.workers[w.wid] = w
        self.by_fd[w.fd] = w
        self.epoll.register(w.fd, select.EPOLLIN)
        self.active.append(w)

    def _replenish(self):
        if self.closed:
            return
        if self.failed_starts >= MAX_FAILED_STARTS:
            if not self.active:
                # No worker will ever take the queued jobs: fail them now.
                self._fail_queue(TerminatedWorkerError(
                    f"{self.failed_starts} worker processes in a row died before they "
                    "sent back any result: workers die as they start (an initializer "
                    "that raises or exits? see their output on stderr)"))
            return
        while len(self.active) < self.target[0]:
            self._spawn()

    def _lost(self, w):
        """``w`` died (not killed by us): it takes no more jobs.  Count the
        deaths in a row of workers that never sent back a result."""
        self.active.remove(w)
        self.failed_starts = 0 if w.served else self.failed_starts + 1

    def _close(self, w):
        """Close our end of ``w``'s socket (no thread is writing to it)."""
        if not w.closed:
            w.closed = True
            self.by_fd.pop(w.fd, None)
            try:
                self.epoll.unregister(w.fd)
            except (OSError, ValueError):
                pass
            w.sock.close()

    def _retire(self, w):
        """Give ``w`` no more jobs; it exits when we close its socket."""
        w.retired = True
        if w in self.active:
            self.active.remove(w)
        if not w.jobs and not w.sending:
            self._close(w)

    def _kill(self, w):
        """Kill ``w`` now (the fork server does it: race-free) and replace it."""
        if w.doomed:
            return
        w.doomed = True
        if w in self.active:
            self.active.remove(w)
        try:
            self._ctrl_send(("kill", w.wid, signal.SIGKILL))
        except OSError:
            pass
        self._replenish()

    # -- jobs (lock held) --------------------------------------------------------

    def _give(self, w, job):
        w.jobs.append(job)
        w.outbox.append(job)
        if not w.sending:
            w.sending = True
            self.to_drain.append(w)

    def _place(self, job):
        """Give ``job`` to an idle worker, or pipeline it behind a short one,
        or queue it."""
        busy = None
        for w in self.active:
            n = len(w.jobs)
            if n == 0:
                self._give(w, job)
                return
            if n < PIPELINE_DEPTH and busy is None:
                busy = w
        if busy is not None and job.pipelinable() and busy.jobs[-1].expected_ns() < PIPELINE_MAX_NS:
            self._give(busy, job)
        else:
            self.queue.append(job)

    def _dispatch_queued(self):
        while self.queue:
            job = self.queue.popleft()
            if job.batch.call.was_aborted:
                continue
            n_queued = len(self.queue)
            self._place(job)
            if len(self.queue) > n_queued:  # it went back: no room anywhere
                self.queue.rotate(1)        # to the front, where it was
                return

    # -- writing (lock not held) -------------------------------------------------

    def _drain(self):
        """Write the outboxes of the workers listed in ``to_drain``."""
        while True:
            with self.lock:
                if not self.to_drain:
                    return
                w = self.to_drain.popleft()
            while True:
                with self.lock:
                    if not w.outbox or w.eof:
                        w.outbox.clear()
                        w.sending = False
                        if w.eof or (w.retired and not w.jobs) or w.wid not in self.workers:
                            self._close(w)
                        break
                    job = w.outbox.popleft()
                try:
                    if job.path != w.path:
                        # Before the job, on the same stream: the worker sets
                        # it before it unpickles the job.
                        w.path = job.path
                        wire.send_msg(w.sock, wire.SET_SYS_PATH,
                                      pickle.dumps(_worker_sys_path(job.path)[1]))
                    wire.send_msg(w.sock, job.token, job.payload, job.buffers)
                    job.sent = True
                except OSError:
                    pass  # it died: the I/O thread sees its EOF and reports it
                except BaseException:
                    # Ctrl-C in the middle of a write: the worker's stream is
                    # cut mid-message, it can never be used again.
                    with self.lock:
                        w.outbox.clear()
                        w.sending = False
                        self._kill(w)
                    raise

    # -- the caller's side --------------------------------------------------------

    def ensure(self, n_workers, limits, env, init=None):
        """Make the pool ``n_workers`` workers of this key (thread limits and
        initializer; workers of another key are replaced), started with
        ``env`` and running ``init`` (a pickled ``(initializer, initargs)``)."""
        with self.lock:
            if self.closed:
                if exiting:
                    return  # a daemon thread at exit: see shutdown_pool
                raise PoolShutdownError("the cyjob process pool has been shut down")
            if self.target == (n_workers, limits) and len(self.active) == n_workers:
                return
            self.failed_starts = 0  # a new call: let workers try to start again
            self.target = (n_workers, limits)
            self.env = env
            self.init = init
            keep = [w for w in self.active if w.key == limits][:n_workers]
            for w in list(self.active):
                if w not in keep:
                    self._retire(w)
            self.active = keep
            self._replenish()
            self._dispatch_queued()
        self._drain()

    def submit(self, job):
        with self.lock:
            if self.closed:
                if exiting:
                    return  # a daemon thread at exit: see shutdown_pool
                raise PoolShutdownError("the cyjob process pool has been shut down")
            if self.failed_starts >= MAX_FAILED_STARTS:
                # Replacements stopped after workers died as they started:
                # a new job gives them another chance (bounded again).
                self.failed_starts = 0
                self._replenish()
            self._place(job)
        self._drain()

    def call_finished(self, call):
        """Drop an aborted call's queued jobs; kill the workers running its jobs."""
        if not call.was_aborted:
            return
        with self.lock:
            if self.queue:
                self.queue = deque(j for j in self.queue if j.batch.call is not call)
            for w in list(self.workers.values()):
                if w.jobs and w.jobs[0].batch.call is call:
                    self._kill(w)
        self._drain()

    def next_token(self):
        return next(self._tokens)

    def watch_folder(self, path, watch=True):
        """Tell the fork server to remove ``path`` if this process dies
        without a word (SIGKILL); ``watch=False``: it was removed."""
        with self.lock:
            if not self.closed:
                try:
                    self._ctrl_send(("folder", path, watch))
                except OSError:
                    pass

    # -- the I/O thread -------------------------------------------------------------

    def _io_loop(self):
        while True:
            timeout = self._next_deadline()
            try:
                events = self.epoll.poll(timeout)
            except InterruptedError:
                continue
            except (OSError, ValueError):
                return  # epoll closed: shutting down
            for fd, _ in events:
                try:
                    self._on_event(fd)
                except Exception:
                    # A bug here must not stop the thread every call waits on.
                    self._internal_error(fd)
            if self.closed:
                return
            self._check_deadlines()
            self._drain()

    def _on_event(self, fd):
        if fd == self.wake_r:
            try:
                while os.read(self.wake_r, 4096):
                    pass
            except OSError:
                pass
        elif fd == self.ctrl.fileno():
            self._read_ctrl()
        else:
            w = self.by_fd.get(fd)
            if w is not None:
                self._read_worker(w)

    def _internal_error(self, fd):
        """Report an unexpected error of the I/O thread; fail the job of the
        worker it concerned and kill that worker, rather than hang."""
        exc = sys.exc_info()[1]
        threading.excepthook(threading.ExceptHookArgs(
            (type(exc), exc, exc.__traceback__, threading.current_thread())))
        with self.lock:
            w = self.by_fd.get(fd)
            if w is None or not w.jobs:
                return
            job = w.jobs.popleft()
            self._kill(w)
        error = PoolShutdownError(f"internal error of cyjob's process pool: {exc!r}")
        error.__cause__ = exc
        job.batch.call.batch_done(job.batch, None, error, 0.0)

    def _next_deadline(self):
        deadlines = [w.deadline for w in list(self.workers.values()) if w.deadline is not None]
        if not deadlines:
            return -1
        return max(0.0, min(deadlines) - time.monotonic())

    def _check_deadlines(self):
        now = time.monotonic()
        with self.lock:
            for w in list(self.workers.values()):
                if w.deadline is not None and now >= w.deadline:
                    self._gone(w)

    def _read_ctrl(self):
        while True:
            try:
                data = self.ctrl.recv(65536, socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                data = b""
            if not data:
                self._server_died()
                return
            msg = pickle.loads(data)
            with self.lock:
                w = self.workers.get(msg[1])
                if w is None:
                    continue
                if msg[0] == "spawned":
                    w.pid = msg[2]
                elif msg[0] == "exited":
                    w.exited, w.code = True, msg[2]
                    if w.eof or w.closed:
                        self._gone(w)
                    else:
                        # A grandchild may hold its socket open: don't wait
                        # for the EOF for long.
                        w.deadline = time.monotonic() + _DEATH_GRACE_S / 4

    def _read_worker(self, w):
        try:
            msg = wire.recv_msg(w.sock)
        except OSError:
            msg = None
        if msg is None:
            with self.lock:
                w.eof = True
                if not w.sending:
                    self._close(w)
                if w in self.active:
                    # It hung up (it is dying): no new job goes to it.
                    self._lost(w)
                    self._replenish()
                if w.exited:
                    self._gone(w)
                else:
                    w.deadline = time.monotonic() + _DEATH_GRACE_S
            return
        token, payload, buffers = msg
        with self.lock:
            w.served = True
            self.failed_starts = 0
            if not w.jobs or w.jobs[0].token != token:
                raise RuntimeError(f"worker {w.pid} answered an unknown job {token}")
            job = w.jobs.popleft()
            if w.retired or w.doomed:
                if not w.jobs and not w.sending:
                    self._close(w)
            elif self.queue and not self.closed:
                self._dispatch_queued()
        self._drain()  # first: the worker starts its next job while we decode
        self._finish(job, payload, buffers)

    def _finish(self, job, payload, buffers):
        """Decode a job's reply and report it to its call."""
        try:
            self._report(job, payload, buffers)
        except Exception as exc:
            # Whatever went wrong, the call must hear of this batch.
            error = PoolShutdownError(f"internal error of cyjob's process pool: {exc!r}")
            error.__cause__ = exc
            if not job.batch.done:
                job.batch.call.batch_done(job.batch, None, error, 0.0)

    def _report(self, job, payload, buffers):
        batch = job.batch
        call = batch.call
        if call.was_aborted:
            call.batch_done(batch, None, _cancelled(), 0.0)
            return
        try:
            results, error_info, duration = pickle.loads(payload, buffers=buffers)
        except BaseException as exc:
            error = pickle.UnpicklingError(
                f"cannot unpickle the results of {tasks_text(batch)} sent back by a "
                f"worker process: {type(exc).__name__}: {exc}")
            error.__cause__ = exc
            call.batch_done(batch, None, error, 0.0)
            return
        if error_info is not None:
            call.batch_done(batch, None, rebuild_error(batch, error_info), duration)
        else:
            call.batch_done(batch, results, None, duration)

    def _gone(self, w):
        """``w`` is dead and reaped: report its running job, requeue the ones
        it had not started, replace it."""
        if w.wid not in self.workers:
            return
        del self.workers[w.wid]
        w.deadline = None
        if not w.sending:
            self._close(w)
        if w in self.active:
            self._lost(w)
        jobs = list(w.jobs)
        w.jobs.clear()
        w.outbox.clear()
        # The first job it got whole was running.  One that never reached it
        # (it died before, e.g. killed while idle, and the pool had not heard
        # yet) goes to another worker, once: a second death before delivery
        # means workers die as they start, and the call must hear of it.
        running = next((j for j in jobs if j.sent), None)
        for job in jobs:
            if job is not running and not job.sent:
                job.undelivered += 1
        if running is None and jobs and jobs[0].undelivered > 1:
            running = jobs[0]
        if not self.closed:
            again = [j for j in jobs if j is not running]
            for job in again:
                job.sent = False  # (a pipelined one: it goes to another worker)
            self.queue.extendleft(reversed(again))
            self._replenish()
            self._dispatch_queued()
        if running is None or self.at_exit:
            return  # (at exit: killed by shutdown, for a daemon thread; see shutdown)
        batch = running.batch
        if batch.call.was_aborted:
            batch.call.batch_done(batch, None, _cancelled(), 0.0)
            return
        pid = f"pid {w.pid}" if w.pid is not None else "pid unknown"
        batch.call.batch_done(batch, None, TerminatedWorkerError(
            f"A worker process ({pid}) running {tasks_text(batch)} of this call died "
            f"with {describe_exit(w.code)}. A crash in the task (segmentation fault), "
            "os._exit, an external kill or the out-of-memory killer can cause this."),
            0.0)

    def _server_died(self):
        """The fork server is gone: its workers cannot be reaped or replaced.
        Kill them, fail their jobs, and let the next call start afresh."""
        with self.lock:
            try:
                self.epoll.unregister(self.ctrl.fileno())
            except (OSError, ValueError):
                pass
            self.closed = True
            for w in list(self.workers.values()):
                if w.pid is not None:
                    try:
                        os.kill(w.pid, signal.SIGKILL)
                    except OSError:
                        pass
                w.exited = True
                self._gone(w)
            self._fail_queue(TerminatedWorkerError("cyjob's fork server process died"))
        _forget(self)

    def _fail_queue(self, error):
        while self.queue:
            job = self.queue.popleft()
            job.batch.call.batch_done(job.batch, None, error, 0.0)

    # -- shutdown -----------------------------------------------------------------

    def shutdown(self, timeout=2.0, at_exit=False):
        """Stop the workers, the fork server and the I/O thread.

        Jobs not finished fail with PoolShutdownError, except at exit: then
        only daemon threads can still be waiting for them, and they are about
        to be frozen; failing their calls would print a traceback from each."""
        with self.lock:
            if self.closed and not self.thread.is_alive():
                return
            self.closed = True
            self.at_exit = at_exit
            workers = list(self.workers.values())
            for w in workers:
                if w.jobs:
                    self._kill(w)
                if not w.sending:
                    self._close(w)
            if at_exit:
                self.queue.clear()
            else:
                self._fail_queue(PoolShutdownError("the cyjob process pool was shut down"))
        try:
            os.write(self.wake_w, b"x")
        except OSError:
            pass
        if threading.current_thread() is not self.thread:
            self.thread.join(timeout)
        # Closing the control socket tells the server to leave once its
        # workers have (they see EOF on their sockets now); "bye" first: our
        # temp folders are ours to remove, we are not dying.
        try:
            self._ctrl_send(("bye",))
        except OSError:
            pass
        self.ctrl.close()
        try:
            self.server.wait(timeout)
        except subprocess.TimeoutExpired:
            self.server.kill()
            self.server.wait()
        with self.lock:
            for w in workers:
                for job in w.jobs:
                    if not job.batch.done and not at_exit:
                        job.batch.call.batch_done(
                            job.batch, None,
                            PoolShutdownError("the cyjob process pool was shut down"), 0.0)
                w.jobs.clear()
        self.epoll.close()
        os.close(self.wake_r)
        os.close(self.wake_w)

    def forget_in_child(self):
        """After fork: close our copies of the parent's pool's descriptors,
        without a word to its processes."""
        for w in list(self.workers.values()):
            w.sock.close()
        self.ctrl.close()
        self.epoll.close()
        for fd in (self.wake_r, self.wake_w):
            try:
                os.close(fd)
            except OSError:
                pass
        self.server.returncode = 0  # the parent's child, not ours: never wait for it


def _cancelled():
    """What a batch of an aborted call reports instead of its results.

    Never "skipped" (no results, no error): ``Call.next_batch`` could hand
    such a batch back as a success if it looked before seeing the error that
    aborted the call.  This error never reaches the user: the call already
    holds the error that aborted it, or its caller has left."""
    return WorkerError("cancelled: the call was aborted")


def rebuild_error(batch, info):
    """The exception to raise in the caller for a batch's error report."""
    kind = info[0]
    if kind == "result":
        _, index, func, reason, text = info
        error = pickle.PicklingError(
            f"the result of task {batch.start + index} (function {func}) cannot be "
            f"pickled to send it back from the worker process: {reason}")
        return chain_remote_traceback(error, text)
    _, blob, type_name, message, text = info
    error = None
    if blob is not None:
        try:
            error = pickle.loads(blob)
        except BaseException:
            error = None
    if not isinstance(error, BaseException):
        # The exception could not travel: a stand-in with its type's name and message.
        error = RuntimeError(f"{tasks_text(batch)} raised {type_name}: {message}")
    if kind == "load":
        error = pickle.UnpicklingError(
            f"a worker process cannot unpickle {tasks_text(batch)}: "
            f"{type(error).__name__}: {safe_str(error)}")
    return chain_remote_traceback(error, text)


# --------------------------------------------------------------------------
# the process-wide pool

_pool = None
_pool_lock = threading.Lock()
#: True once the interpreter exits (the atexit hook ran): no new pool.
exiting = False


def get_pool():
    """The pool of this process, started if needed."""
    global _pool
    pool = _pool
    if pool is not None and not pool.closed and pool.pid == os.getpid():
        return pool
    if exiting:
        raise PoolShutdownError("the interpreter is exiting: no new cyjob process pool")
    with _pool_lock:
        if _pool is None or _pool.closed or _pool.pid != os.getpid():
            _pool = _Pool()
        return _pool


def _forget(pool):
    global _pool
    with _pool_lock:
        if _pool is pool:
            _pool = None


def shutdown_pool(timeout=2.0, at_exit=False):
    """Stop the worker processes and remove temp files (at exit, or in tests)."""
    global _pool
    with _pool_lock:
        pool, _pool = _pool, None
    if pool is not None and pool.pid == os.getpid():
        pool.shutdown(timeout, at_exit)
    # Not imported here: a program that never shared an array has nothing
    # to clean.  A daemon thread may be importing it right now, at exit:
    # then nothing of it has run yet (no folder), and cleanup_all may not
    # exist yet either.
    cleanup_all = getattr(sys.modules.get("cyjob.backends.processes.sharedmem"),
                          "cleanup_all", None)
    if cleanup_all is not None:
        cleanup_all()


def _forget_pool_after_fork():
    global _pool, _pool_lock
    pool, _pool = _pool, None
    _pool_lock = threading.Lock()
    if pool is not None:
        try:
            pool.forget_in_child()
        except Exception:
            pass


def _shutdown_at_exit():
    # From now on a daemon thread's call runs its batches in its own thread
    # (ProcessExecutor.submit), and batches already sent are never reported:
    # those threads wait quietly until finalisation stops them.
    global exiting
    exiting = True
    shutdown_pool(at_exit=True)


os.register_at_fork(after_in_child=_forget_pool_after_fork)
# Before finalisation: the I/O thread must not take the GIL once it starts.
atexit.register(_shutdown_at_exit)
