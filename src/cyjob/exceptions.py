"""Exceptions raised by cyjob, compatible with joblib's."""

import builtins
import multiprocessing
import traceback


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


class TempFolderError(OSError):
    """A process call's temp folder cannot be made or written for its large
    numpy arguments: the arguments are fine (not a pickling error), the
    folder is not."""


class RemoteTraceback(Exception):
    """The traceback of a task that failed in a worker (a thread, a process
    or a dask worker), chained as the ``__cause__`` of the error re-raised in
    the caller, as joblib shows it."""

    def __init__(self, tb):
        super().__init__(tb)
        self.tb = tb

    def __str__(self):
        return f'\n"""\n{self.tb}"""'


def traceback_text(error):
    """The formatted traceback of ``error`` (what ``RemoteTraceback`` shows)."""
    return "".join(traceback.format_exception(type(error), error, error.__traceback__))


def chain_remote_traceback(error, text):
    """Rebuild a task's error for the caller: chain the worker-side traceback
    ``text`` as its ``__cause__``, unless it already has a cause."""
    if error.__cause__ is None:
        error.__cause__ = RemoteTraceback(text)
    return error
