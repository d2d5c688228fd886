"""What a cyjob backend is: where batches run, and how many at once."""

from cyjob._cpus import n_workers


class Backend:
    """Base class of backends; ``register_parallel_backend`` takes factories
    that return instances of subclasses.

    A backend provides an :class:`cyjob._dispatch.Executor` for a number of workers.
    The executor's ``submit(batch)`` starts running the batch's tasks —
    ``batch.tasks`` is flat, ``[f0, args0, kwargs0, f1, ...]``;
    ``batch.task_tuples()`` gives ``(func, args, kwargs)`` tuples, and
    ``cyjob._tasks.run_tasks(batch.tasks)`` runs them — and, once done,
    reports from any thread with the GIL held:
    ``batch.call.batch_done(batch, results, error, duration_ns)``.
    Batching, ordering, errors, time-outs and progress are the core's job.
    """

    name = "base"
    #: Tasks share the caller's memory (``require="sharedmem"`` is allowed).
    supports_sharedmem = False
    #: ``Parallel.n_jobs`` when neither the call nor ``parallel_config`` gives
    #: one (joblib's attribute of the same name: libraries read ``n_jobs``).
    default_n_jobs = 1
    #: Batches run outside this process (a cluster's workers): with one
    #: worker they still go there, one at a time, not to the caller's thread.
    runs_elsewhere = False

    def __init__(self, **backend_params):
        self.backend_params = backend_params

    def effective_n_jobs(self, n_jobs):
        """Workers for ``n_jobs`` (None means 1; negative counts from the CPUs)."""
        return n_workers(n_jobs)

    def executor(self, n_workers, plan=None):
        """A ready executor running up to ``n_workers`` batches at once.

        ``plan`` (a ``cyjob._plan.Plan``, or None outside ``Parallel``) holds
        the call's checked settings: ``return_as``, ``timeout``, the sharing
        settings (``max_nbytes``, ``temp_folder``, ``mmap_mode``,
        ``inner_max_num_threads``), the batch policy."""
        raise NotImplementedError

    def __repr__(self):
        return f"{type(self).__name__}()"
