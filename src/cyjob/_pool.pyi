"""Type stubs for the compiled module cyjob._pool (see _pool.pyx)."""

import threading
from typing import Any, Callable

class Work:
    """Something a worker runs: claimed once, by whoever runs it first."""

    claimed: bool

class Job(Work):
    """``ThreadPool.submit(fn, callback)``: ``fn()`` run by a worker."""

    @property
    def fn(self) -> Callable[[], Any] | None: ...
    callback: Callable[[Job], object] | None
    result: Any
    error: BaseException | None
    @property
    def duration_ns(self) -> float: ...
    def __init__(self, fn: Callable[[], Any],
                 callback: Callable[[Job], object] | None = None) -> None: ...
    def cancel(self) -> bool: ...

def in_worker_thread() -> bool: ...

MAX_RETIRED_THREADS: int

class Worker:
    """One thread of a pool, and what it runs."""

    @property
    def thread(self) -> threading.Thread: ...

class ThreadPool:
    """Worker threads that wait for work in C without the GIL."""

    @property
    def threads(self) -> list[threading.Thread]: ...
    @property
    def closed(self) -> bool: ...
    @property
    def n_threads(self) -> int: ...
    @property
    def owner_pid(self) -> int: ...
    def __init__(self, n_threads: int, name: str = "cyjob-worker",
                 start: int | None = None) -> None: ...
    def start_threads(self, n: int = -1) -> None: ...
    def submit(self, fn: Callable[[], Any],
               callback: Callable[[Job], object] | None = None) -> Job: ...
    def submit_job(self, job: Job) -> Job: ...
    def shutdown(self, wait: bool = True, timeout: float | None = None,
                 at_exit: bool = False) -> None: ...
    def alive(self) -> bool: ...
