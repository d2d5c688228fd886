"""Until the process pool lands, joblib's process backend names must fail
clearly instead of silently running on threads.  Delete this file when the
process backend arrives."""

import pytest

from cyjob import Parallel, delayed
from helpers import Counter


@pytest.mark.parametrize("backend", ["loky", "multiprocessing"])
def test_process_backends_raise_a_clear_error(backend):
    counter = Counter()
    with pytest.raises(Exception, match=backend) as info:
        Parallel(n_jobs=2, backend=backend)(delayed(counter)(i) for i in range(5))
    assert "not available" in str(info.value) or "not implemented" in str(info.value).lower()
    assert counter.value == 0
