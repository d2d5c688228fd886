from cyjob import Parallel, delayed


def inc(x):
    return x + 1


def test_threads_return_results_in_order():
    assert Parallel(n_jobs=2)(delayed(inc)(x) for x in range(1000)) == list(range(1, 1001))
