"""Exceptions raised by cyjob, compatible with joblib's."""

import builtins
import multiprocessing


class TimeoutError(multiprocessing.TimeoutError, builtins.TimeoutError):
    """A result took longer than ``Parallel(timeout=...)`` seconds.

    It is both the builtin ``TimeoutError`` and joblib's
    ``multiprocessing.TimeoutError``, so code written for either catches it.
    """


class WorkerError(RuntimeError):
    """Base class for failures of the workers themselves, not of a task."""


class TerminatedWorkerError(WorkerError):
    """A worker process died (crash, signal, ``os._exit``) while running tasks."""


class PoolShutdownError(WorkerError):
    """The pool was shut down (interpreter exit) while tasks were pending."""
