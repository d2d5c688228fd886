"""Running the CPU side of a dump or load (checksums, compression) on cyjob's
own worker threads while the caller does the I/O."""

#: Below this many chunks a file is handled in the caller's thread: starting
#: a call on the pool costs ~0.1 ms, more than hashing a few MB.
MIN_PARALLEL_CHUNKS = 3


def n_threads():
    """Threads to use: the CPUs this process may run on (affinity, cgroups)."""
    from cyjob._cpus import cpu_count

    return cpu_count()


def ordered_map(func, arg_tuples, n_chunks):
    """``func(*args)`` for each tuple of ``arg_tuples``, in order.

    With enough chunks and CPUs the calls run on cyjob's thread pool (the
    libraries called here release the GIL); the input is read lazily by the
    caller, at most a few chunks ahead of the results (memory stays bounded
    whatever the file size).  The caller must close the returned generator
    if it stops early.
    """
    if n_chunks < MIN_PARALLEL_CHUNKS:
        return (func(*args) for args in arg_tuples)
    workers = n_threads()
    if workers < 2:
        return (func(*args) for args in arg_tuples)
    from cyjob import Parallel, delayed  # public names: they survive refactors

    # Every setting explicit: an active parallel_config must not change (or
    # print from) a dump.
    return Parallel(n_jobs=workers, backend="threading", return_as="generator",
                    batch_size=1, pre_dispatch="2 * n_jobs", verbose=0, timeout=None)(
        delayed(func)(*args) for args in arg_tuples)
