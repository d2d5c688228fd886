"""Processes: a pool of worker processes for GIL-bound Python tasks.

Names: "processes", and joblib's "loky" and "multiprocessing".

How it works
------------
* One pool per parent process, started on first use, reused by every call and
  every ``Parallel``, stopped at exit (``atexit``) and forgotten in a forked
  child (which builds its own if it needs one).
* Workers come from a **fork server** (see ``_process_worker``): a fresh
  interpreter started with fork + exec that preloads cyjob and cloudpickle,
  then forks workers on request.  Plain ``fork`` of the caller is not safe:
  cyjob's own worker threads (and the user's, and BLAS's) may hold locks at
  the moment of the fork, which the child would inherit locked forever, and
  CPython 3.12+ warns on every fork of a threaded process.  The fork server is
  single-threaded, so forking there is safe, and cheaper than ``spawn``: a
  replacement for a killed worker is ready in a few ms.
* Each worker talks to the parent over its own socket pair.  A batch is
  pickled once (cloudpickle, protocol 5, large numpy arrays by reference to
  a file, see ``_sharedmem``) in the caller's thread by ``submit`` and goes to
  an idle worker, or waits in the pool's queue for the next one that frees up
  (one batch per worker at a time: a batch never waits behind a slow one on a
  busy worker while another is idle).
* One I/O thread per pool waits on every worker socket with ``epoll``,
  hands a freed worker its next batch, decodes results and calls
  ``batch.call.batch_done``.  It also learns from the fork server which
  workers exited and how, so a death is reported with its exit code or
  signal.
"""

import atexit
import itertools
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

from cyjob._core import Executor
from cyjob.backends import _process_worker as worker
from cyjob.backends.base import Backend
from cyjob.config import cpu_count, get_config
from cyjob.exceptions import PoolShutdownError, TerminatedWorkerError

__all__ = ["ProcessBackend", "shutdown_pool"]

#: Thread-count variables of BLAS/OpenMP/numba/numexpr set in the workers.
THREAD_LIMIT_VARS = (
    "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "BLIS_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS", "NUMBA_NUM_THREADS", "NUMEXPR_NUM_THREADS",
)
# A worker's socket can reach EOF before the fork server's note of its exit
# status arrives (or the other way round): wait this long for the other one
# before reporting the death with what is known.
_DEATH_GRACE_S = 2.0

_CYJOB_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class _RemoteTraceback(Exception):
    """The worker-side traceback, chained as ``__cause__`` of a task's error
    (as joblib does)."""

    def __init__(self, tb):
        super().__init__(tb)
        self.tb = tb

    def __str__(self):
        return f'\n"""\n{self.tb}"""'


def _signal_name(signum):
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def describe_exit(code):
    """'exit code 3' / 'signal 9 (SIGKILL)' for a returncode-style ``code``."""
    if code is None:
        return "an unknown exit status"
    if code < 0:
        text = f"signal {-code} ({_signal_name(-code)})"
        if -code == signal.SIGKILL:
            text += ", possibly the out-of-memory killer"
        elif -code == signal.SIGSEGV:
            text += ", a segmentation fault"
        return text
    return f"exit code {code}"


# --------------------------------------------------------------------------
# the pool


class _Worker:
    __slots__ = ("wid", "sock", "fd", "pid", "key", "job", "sending", "eof", "code",
                 "exited", "deadline", "doomed", "retired", "closed")

    def __init__(self, wid, sock, key):
        self.wid = wid
        self.sock = sock
        self.fd = sock.fileno()
        self.pid = None
        self.key = key
        self.job = None         # the _Job it is running
        self.sending = False    # a thread is writing to its socket
        self.eof = False        # its socket reached EOF
        self.code = None        # exit code, once the fork server reaped it
        self.exited = False
        self.deadline = None    # when to stop waiting for eof/exit status
        self.doomed = False     # killed on purpose: its batch was aborted
        self.retired = False    # leaves when idle (the pool was resized)
        self.closed = False


class _Job:
    __slots__ = ("batch", "payload", "buffers", "token")

    def __init__(self, batch, payload, buffers, token):
        self.batch = batch
        self.payload = payload
        self.buffers = buffers
        self.token = token


class _Pool:
    """Worker processes, their fork server, and the I/O thread."""

    def __init__(self):
        self.pid = os.getpid()
        self.lock = threading.RLock()
        self.workers = {}        # wid -> _Worker, every worker not yet gone
        self.by_fd = {}          # socket fd -> _Worker
        self.active = []         # workers that take new batches
        self.queue = deque()     # _Jobs waiting for an idle worker
        self.to_send = deque()   # (worker, job) assigned, to write without the lock
        self.target = (0, None)  # (n_workers, thread limits) of the last call
        self.closed = False
        self._wids = itertools.count(1)
        self._tokens = itertools.count(1)
        self.epoll = select.epoll()
        self.wake_r, self.wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.epoll.register(self.wake_r, select.EPOLLIN)
        self._start_server()
        self.thread = threading.Thread(target=self._io_loop, name="cyjob-process-io",
                                       daemon=True)
        self.thread.start()

    # -- fork server ----------------------------------------------------------

    def _start_server(self):
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        code = (f"import sys; sys.path.insert(0, {_CYJOB_ROOT!r}); "
                "from cyjob.backends._process_worker import forkserver_main; "
                f"forkserver_main({theirs.fileno()})")
        try:
            self.server = subprocess.Popen([sys.executable, "-c", code],
                                           pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL)
        finally:
            theirs.close()
        self.ctrl = ours
        self.epoll.register(ours.fileno(), select.EPOLLIN)

    def _ctrl_send(self, msg, fds=()):
        data = pickle.dumps(msg)
        if fds:
            socket.send_fds(self.ctrl, [data], list(fds))
        else:
            self.ctrl.send(data)

    # -- workers ---------------------------------------------------------------

    def _spawn(self, key, env):
        """Ask for a new worker (lock held).  Its socket works at once: a batch
        written before the fork waits in the socket's buffer."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        w = _Worker(next(self._wids), ours, key)
        try:
            path = list(sys.path)
            cwd = os.getcwd()
            path = [cwd if p == "" else p for p in path]
            self._ctrl_send(("spawn", w.wid, env, path, cwd), [theirs.fileno()])
        except OSError as exc:
            ours.close()
            raise TerminatedWorkerError(f"cannot start a worker process: the cyjob fork "
                                        f"server is gone ({exc})") from exc
        finally:
            theirs.close()
        self.workers[w.wid] = w
        self.by_fd[w.fd] = w
        self.epoll.register(w.fd, select.EPOLLIN)
        self.active.append(w)
        return w

    def ensure(self, n_workers, limits, env):
        """Make the pool ``n_workers`` workers with these thread limits."""
        with self.lock:
            if self.closed:
                raise PoolShutdownError("the cyjob process pool has been shut down")
            key = (n_workers, limits)
            if self.target == key and len(self.active) == n_workers:
                return
            self.target = key
            self._env = env
            keep = []
            for w in self.active:
                if w.key == limits and len(keep) < n_workers:
                    keep.append(w)
                else:
                    self._retire(w)
            self.active = keep
            while len(self.active) < n_workers:
                self._spawn(limits, env)
            self._dispatch_queued()
        self._flush()

    def _retire(self, w):
        """Stop giving ``w`` batches; close its socket once idle (it exits)."""
        w.retired = True
        if w.job is None and not w.sending:
            self._close(w)

    def _close(self, w):
        """Close our end of ``w``'s socket (lock held, no sender on it)."""
        if not w.closed:
            w.closed = True
            self.by_fd.pop(w.fd, None)
            try:
                self.epoll.unregister(w.fd)
            except (OSError, ValueError):
                pass
            w.sock.close()

    def _kill(self, w):
        """Kill ``w`` (its batch's call was aborted) and replace it."""
        if w.doomed:
            return
        w.doomed = True
        if w in self.active:
            self.active.remove(w)
        try:
            self._ctrl_send(("kill", w.wid, signal.SIGKILL))
        except OSError:
            pass
        n_workers, limits = self.target
        if not self.closed and len(self.active) < n_workers:
            self._spawn(limits, self._env)

    # -- sending ----------------------------------------------------------------

    def submit(self, job):
        with self.lock:
            if self.closed:
                raise PoolShutdownError("the cyjob process pool has been shut down")
            w = self._idle_worker()
            if w is None:
                self.queue.append(job)
                return
            w.job = job
            w.sending = True
        self._send(w, job)

    def _idle_worker(self):
        for w in self.active:
            if w.job is None and not w.sending:
                return w
        return None

    def _next_job(self):
        """The next queued job whose call still wants it (lock held)."""
        while self.queue:
            job = self.queue.popleft()
            if not job.batch.call.was_aborted:
                return job
        return None

    def _dispatch_queued(self):
        """Give queued jobs to idle workers (lock held).  The writes wait in
        ``to_send`` until the lock is released: see ``_flush``."""
        while self.queue:
            w = self._idle_worker()
            if w is None:
                return
            job = self._next_job()
            if job is None:
                return
            w.job = job
            w.sending = True
            self.to_send.append((w, job))

    def _flush(self):
        """Do the writes that ``_dispatch_queued`` planned (lock not held: a
        large write blocks until the worker reads it)."""
        while self.to_send:
            try:
                w, job = self.to_send.popleft()
            except IndexError:
                return
            self._send(w, job)

    def _send(self, w, job):
        """Write ``job`` to ``w`` (without the lock: a write may block)."""
        try:
            worker.send_msg(w.sock, job.token, job.payload, job.buffers)
        except OSError:
            pass  # the worker died: the I/O thread sees its EOF and reports it
        with self.lock:
            w.sending = False
            if w.eof or (w.retired and w.job is None):
                self._close(w)

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
            self._flush()

    def _on_event(self, fd):
        if fd == self.wake_r:
            try:
                while os.read(self.wake_r, 4096):
                    pass
            except (BlockingIOError, OSError):
                pass
        elif fd == self.ctrl.fileno():
            self._read_ctrl()
        else:
            w = self.by_fd.get(fd)
            if w is not None:
                self._read_worker(w)

    def _internal_error(self, fd):
        """Report an unexpected error of the I/O thread, and fail the batch of
        the worker it concerned (then kill that worker) instead of hanging."""
        exc = sys.exc_info()[1]
        threading.excepthook(threading.ExceptHookArgs(
            (type(exc), exc, exc.__traceback__, threading.current_thread())))
        with self.lock:
            w = self.by_fd.get(fd)
            if w is None:
                return
            job, w.job = w.job, None
            self._kill(w)
        if job is not None:
            error = PoolShutdownError(f"internal error of cyjob's process pool: {exc!r}")
            error.__cause__ = exc
            job.batch.call.batch_done(job.batch, None, error, 0.0)

    def _next_deadline(self):
        deadlines = [w.deadline for w in list(self.workers.values()) if w.deadline is not None]
        if not deadlines:
            return -1
        return max(0.0, min(deadlines) - time.monotonic())

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
                    w.exited = True
                    w.code = msg[2]
                    if w.eof or w.closed:
                        self._gone(w)
                    else:
                        # A grandchild may hold its socket open: don't wait
                        # for EOF forever.
                        w.deadline = time.monotonic() + _DEATH_GRACE_S / 4

    def _read_worker(self, w):
        try:
            msg = worker.recv_msg(w.sock)
        except OSError:
            msg = None
        if msg is None:
            with self.lock:
                w.eof = True
                if not w.sending:
                    self._close(w)
                if w.exited:
                    self._gone(w)
                else:
                    w.deadline = time.monotonic() + _DEATH_GRACE_S
            return
        token, payload, buffers = msg
        with self.lock:
            job, w.job = w.job, None
            nxt = None
            if w.retired or w.doomed:
                if not w.sending:
                    self._close(w)
            elif not self.closed:
                nxt = self._next_job()
                if nxt is not None:
                    w.job = nxt
                    w.sending = True
        if nxt is not None:
            self._send(w, nxt)  # first: the worker starts while we decode
        if job is None or job.token != token:
            return
        self._finish(job, payload, buffers)

    def _finish(self, job, payload, buffers):
        batch = job.batch
        call = batch.call
        if call.was_aborted:
            call.batch_done(batch, None, None, 0.0)
            return
        try:
            results, error_info, duration = pickle.loads(payload, buffers=buffers)
        except BaseException as exc:
            error = pickle.UnpicklingError(
                f"cannot unpickle the results of {_tasks_text(batch)} sent back by a "
                f"worker process: "
                f"{type(exc).__name__}: {exc}")
            error.__cause__ = exc
            call.batch_done(batch, None, error, 0.0)
            return
        error = None
        if error_info is not None:
            error = _rebuild_error(batch, error_info)
            results = None
        call.batch_done(batch, results, error, duration)

    def _gone(self, w):
        """``w`` is dead and reaped (lock held): report its batch, replace it."""
        if w.wid not in self.workers:
            return
        del self.workers[w.wid]
        w.deadline = None
        if not w.sending:
            self._close(w)
        if w in self.active:
            self.active.remove(w)
        job, w.job = w.job, None
        if not (w.doomed or w.retired or self.closed):
            n_workers, limits = self.target
            if len(self.active) < n_workers:
                self._spawn(limits, self._env)
            self._dispatch_queued()
        if job is None:
            return
        batch = job.batch
        if w.doomed or batch.call.was_aborted:
            batch.call.batch_done(batch, None, None, 0.0)
            return
        pid = f"pid {w.pid}" if w.pid is not None else "pid unknown"
        batch.call.batch_done(batch, None, TerminatedWorkerError(
            f"A worker process ({pid}) running {_tasks_text(batch)} of this call died with "
            f"{describe_exit(w.code)}. A crash of the task (segmentation fault), "
            "os._exit, an external kill or the out-of-memory killer can cause this."),
            0.0)

    def _check_deadlines(self):
        now = time.monotonic()
        with self.lock:
            for w in list(self.workers.values()):
                if w.deadline is not None and now >= w.deadline:
                    self._gone(w)

    def _server_died(self):
        """The fork server is gone: its workers cannot be reaped or replaced.
        Kill them, fail their batches, and let the next call start afresh."""
        with self.lock:
            try:
                self.epoll.unregister(self.ctrl.fileno())
            except (OSError, ValueError):
                pass
            workers = list(self.workers.values())
            for w in workers:
                if w.pid is not None:
                    try:
                        os.kill(w.pid, signal.SIGKILL)
                    except OSError:
                        pass
            self.closed = True
            for w in workers:
                w.exited = True
                self._gone(w)
            self._fail_queue(TerminatedWorkerError("the cyjob fork server died"))
        _forget(self)

    def _fail_queue(self, error):
        while self.queue:
            job = self.queue.popleft()
            job.batch.call.batch_done(job.batch, None, error, 0.0)

    # -- calls ---------------------------------------------------------------

    def call_finished(self, call):
        """Drop a finished call's queued batches; kill workers still running
        its batches if it was aborted."""
        if not call.was_aborted:
            return
        with self.lock:
            if self.queue:
                self.queue = deque(j for j in self.queue if j.batch.call is not call)
            for w in list(self.workers.values()):
                if w.job is not None and w.job.batch.call is call:
                    self._kill(w)

    def next_token(self):
        return next(self._tokens)

    def shutdown(self, timeout=2.0):
        """Stop the workers, the fork server and the I/O thread."""
        with self.lock:
            if self.closed and not self.thread.is_alive():
                return
            self.closed = True
            workers = list(self.workers.values())
            for w in workers:
                if w.job is not None:
                    self._kill(w)
                if not w.sending:
                    self._close(w)
            self._fail_queue(PoolShutdownError("the cyjob process pool was shut down"))
        try:
            os.write(self.wake_w, b"x")
        except OSError:
            pass
        if threading.current_thread() is not self.thread:
            self.thread.join(timeout)
        # Closing the control socket tells the server to leave once its
        # workers have (they see EOF on their sockets now).
        try:
            self.ctrl.close()
        except OSError:
            pass
        try:
            self.server.wait(timeout)
        except subprocess.TimeoutExpired:
            self.server.kill()
            self.server.wait()
        with self.lock:
            for w in workers:
                job, w.job = w.job, None
                if job is not None and not job.batch.done:
                    job.batch.call.batch_done(
                        job.batch, None,
                        PoolShutdownError("the cyjob process pool was shut down"), 0.0)
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
        self.server.returncode = 0  # not our child: never wait for it


def _tasks_text(batch):
    if batch.size == 1:
        return f"task {batch.start}"
    return f"tasks {batch.start}-{batch.start + batch.size - 1}"


def _rebuild_error(batch, info):
    """The exception to raise in the caller for a batch's error report."""
    kind = info[0]
    if kind == "result":
        _, index, func, reason, text = info
        error = pickle.PicklingError(
            f"the result of task {batch.start + index} (function {func}) cannot be "
            f"pickled to send it back from the worker process: {reason}")
        error.__cause__ = _RemoteTraceback(text)
        return error
    _, blob, type_name, message, text = info
    error = None
    if blob is not None:
        try:
            error = pickle.loads(blob)
        except BaseException:
            error = None
    if not isinstance(error, BaseException):
        # The exception could not travel: keep its type's name and message.
        error = RuntimeError(f"{type_name}: {message}")
    if kind == "load":
        error = pickle.UnpicklingError(
            f"a worker process cannot unpickle {_tasks_text(batch)}: "
            f"{type(error).__name__}: {error}")
    error.__cause__ = _RemoteTraceback(text)
    return error


# --------------------------------------------------------------------------
# the process-wide pool

_pool = None
_pool_lock = threading.Lock()


def get_pool():
    global _pool
    pool = _pool
    if pool is not None and not pool.closed and pool.pid == os.getpid():
        return pool
    with _pool_lock:
        if _pool is None or _pool.closed or _pool.pid != os.getpid():
            _pool = _Pool()
        return _pool


def _forget(pool):
    global _pool
    with _pool_lock:
        if _pool is pool:
            _pool = None


def shutdown_pool(timeout=2.0):
    """Stop the worker processes and remove temp files (at exit, or in tests)."""
    global _pool
    with _pool_lock:
        pool, _pool = _pool, None
    if pool is not None and pool.pid == os.getpid():
        pool.shutdown(timeout)
    sharedmem = sys.modules.get("cyjob.backends._sharedmem")
    if sharedmem is not None:
        sharedmem.cleanup_all()


def _forget_pool_after_fork():
    global _pool, _pool_lock
    pool, _pool = _pool, None
    _pool_lock = threading.Lock()
    if pool is not None:
        try:
            pool.forget_in_child()
        except Exception:
            pass


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool_after_fork)
# Before finalisation: the I/O thread must not take the GIL after it starts.
atexit.register(shutdown_pool)


# --------------------------------------------------------------------------
# the executor and the backend

_sharedmem = None  # cyjob.backends._sharedmem, imported on first use


def thread_limits(n_workers):
    """The values of THREAD_LIMIT_VARS for workers of a call of ``n_workers``."""
    inner = get_config().get("inner_max_num_threads")
    default = str(inner if inner is not None else max(cpu_count() // n_workers, 1))
    environ = os.environ
    return tuple(environ.get(var, default) for var in THREAD_LIMIT_VARS)


class ProcessExecutor(Executor):
    """Runs a call's batches on the shared pool of worker processes.

    Parameters
    ----------
    n_workers : int
    max_nbytes, temp_folder, mmap_mode
        Large-array sharing, as given to ``Parallel``.
    """

    def __init__(self, n_workers, max_nbytes=1 << 20, temp_folder=None, mmap_mode="r"):
        super().__init__(n_workers)
        self.max_nbytes = max_nbytes
        self.temp_folder = temp_folder
        self.mmap_mode = mmap_mode
        self.limits = thread_limits(n_workers)
        self._calls = {}  # id(call) -> CallMemory
        self.pool = get_pool()
        self._ensure()
        # Imported after the workers are asked for: cloudpickle loads in this
        # process while the fork server boots (cold start).
        global _sharedmem
        if _sharedmem is None:
            from cyjob.backends import _sharedmem

    def _ensure(self):
        pool = self.pool
        if pool.closed or pool.pid != os.getpid():
            self.pool = pool = get_pool()
        if pool.target != (self.n_workers, self.limits):
            env = dict(os.environ)
            env.update(zip(THREAD_LIMIT_VARS, self.limits))
            pool.ensure(self.n_workers, self.limits, env)

    def submit(self, batch):
        self._ensure()
        memory = self._calls.get(id(batch.call))
        if memory is None:
            memory = self._calls[id(batch.call)] = _sharedmem.CallMemory(
                self.max_nbytes, self.temp_folder, self.mmap_mode)
        payload, buffers = _pickle_tasks(batch, memory)
        self.pool.submit(_Job(batch, payload, buffers, self.pool.next_token()))

    def call_finished(self, call):
        self.pool.call_finished(call)
        memory = self._calls.pop(id(call), None)
        if memory is not None:
            memory.cleanup()


def _pickle_tasks(batch, memory):
    """Pickle a batch once; name the task and argument that cannot be pickled."""
    try:
        return worker.dumps(batch.tasks, _sharedmem.TaskPickler, memory)
    except Exception as exc:
        where = _find_unpicklable(batch, memory)
        raise pickle.PicklingError(
            f"Could not pickle {where} to send it to a worker process: "
            f"{type(exc).__name__}: {exc}") from exc


def _find_unpicklable(batch, memory):
    flat = batch.tasks
    for i in range(len(flat) // 3):
        func, args, kwargs = flat[3 * i: 3 * i + 3]
        index = batch.start + i
        parts = [(f"the function of task {index} ({worker._describe(func)})", func)]
        parts += [(f"argument {j} of task {index}", a) for j, a in enumerate(args)]
        parts += [(f"keyword argument {k!r} of task {index}", v) for k, v in kwargs.items()]
        for label, obj in parts:
            try:
                worker.dumps(obj, _sharedmem.TaskPickler, memory)
            except Exception:
                return label
    return _tasks_text(batch)


class ProcessBackend(Backend):
    """Worker processes from a fork server, shared by every call."""

    name = "processes"
    supports_sharedmem = False
    in_process = False

    def executor(self, n_workers, parallel=None):
        if worker.IN_WORKER:
            # Nested in one of our workers: threads there, never processes
            # (every worker starting a pool of its own is a fork bomb).
            return self.nested_backend().executor(n_workers, parallel)
        if parallel is None:
            return ProcessExecutor(n_workers)
        return ProcessExecutor(n_workers, parallel.max_nbytes, parallel.temp_folder,
                               parallel.mmap_mode)

    def nested_backend(self):
        from cyjob.backends.threads import ThreadingBackend

        return ThreadingBackend()
