"""What a cyjob backend is: where batches run, and how many at once."""

from cyjob.config import cpu_count


class Backend:
    """Base class of backends; ``register_parallel_backend`` takes factories
    that return instances of subclasses.

    A backend provides an :class:`cyjob._core.Executor` for a number of workers.
    The executor's ``submit(batch)`` starts running the batch's tasks —
    ``batch.tasks`` is flat, ``[f0, args0, kwargs0, f1, ...]``;
    ``batch.task_tuples()`` gives ``(func, args, kwargs)`` tuples, and
    ``cyjob._core.run_tasks(batch.tasks)`` runs them — and, once done,
    reports from any thread with the GIL held:
    ``batch.call.batch_done(batch, results, error, duration_ns)``.
    Batching, ordering, errors, time-outs and progress are the core's job.
    """

    name = "base"
    #: Tasks share the caller's memory (``require="sharedmem"`` is allowed).
    supports_sharedmem = False
    #: Tasks run in the calling process (no pickling).
    in_process = False

    def __init__(self, **backend_params):
        self.backend_params = backend_params

    def effective_n_jobs(self, n_jobs):
        """Workers for ``n_jobs`` (None means 1; negative counts from the CPUs)."""
        if n_jobs is None:
            return 1
        if n_jobs == 0:
            raise ValueError("n_jobs == 0 has no meaning")
        if n_jobs < 0:
            return max(cpu_count() + 1 + n_jobs, 1)
        return n_jobs

    def executor(self, n_workers, parallel=None):
        """A ready executor running up to ``n_workers`` batches at once."""
        raise NotImplementedError

    def nested_backend(self):
        """The backend for a ``Parallel`` called inside one of our workers."""
        from cyjob.backends.sequential import SequentialBackend

        return SequentialBackend()

    def __repr__(self):
        return f"{type(self).__name__}()"
