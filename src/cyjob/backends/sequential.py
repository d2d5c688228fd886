"""Run every task in the caller's thread, one at a time."""

from cyjob._dispatch import InlineExecutor
from cyjob.backends.base import Backend

_EXECUTOR = InlineExecutor(1)


class SequentialBackend(Backend):
    name = "sequential"
    supports_sharedmem = True

    def effective_n_jobs(self, n_jobs):
        super().effective_n_jobs(n_jobs)  # still reject n_jobs == 0
        return 1

    def executor(self, n_workers, plan=None):
        return _EXECUTOR
