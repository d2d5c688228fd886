"""How many CPUs this process may use, and how many workers ``n_jobs`` means:
the one home of both rules (joblib's meaning)."""

import os


def _cgroup_cpu_limit():
    """CPUs allowed by a cgroup v2/v1 quota, or None."""
    try:
        with open("/sys/fs/cgroup/cpu.max") as f:
            quota, period = f.read().split()[:2]
        if quota != "max":
            return max(1, -(-int(quota) // int(period)))
    except (OSError, ValueError):
        pass
    try:
        with open("/sys/fs/cgroup/cpu/cpu.cfs_quota_us") as f:
            quota = int(f.read())
        with open("/sys/fs/cgroup/cpu/cpu.cfs_period_us") as f:
            period = int(f.read())
        if quota > 0 and period > 0:
            return max(1, -(-quota // period))
    except (OSError, ValueError):
        pass
    return None


_cpu_count_cache = None


def cpu_count(only_physical_cores=False):
    """CPUs this process may use: affinity mask, cgroup quota and the
    ``LOKY_MAX_CPU_COUNT`` override (as joblib honours it)."""
    global _cpu_count_cache
    if _cpu_count_cache is None:
        try:
            count = len(os.sched_getaffinity(0))
        except AttributeError:
            count = os.cpu_count() or 1
        limit = _cgroup_cpu_limit()
        if limit is not None:
            count = min(count, limit)
        _cpu_count_cache = max(1, count)
    count = _cpu_count_cache
    override = os.environ.get("LOKY_MAX_CPU_COUNT")
    if override:
        try:
            count = min(count, max(1, int(override)))
        except ValueError:
            pass
    return count


def n_workers(n_jobs, total=None):
    """Workers for ``n_jobs``: None means 1, a negative value counts back from
    ``total`` (default: ``cpu_count()``; -1 is all of them), never below 1."""
    if n_jobs is None:
        return 1
    if n_jobs == 0:
        raise ValueError("n_jobs == 0 in Parallel has no meaning")
    if n_jobs < 0:
        return max((cpu_count() if total is None else total) + 1 + n_jobs, 1)
    return n_jobs
