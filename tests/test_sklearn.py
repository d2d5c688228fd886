"""scikit-learn on cyjob through joblib: same results as a sequential run."""

import threading

import numpy as np
import pytest

joblib = pytest.importorskip("joblib")
pytest.importorskip("sklearn")

from sklearn.datasets import make_classification  # noqa: E402
from sklearn.ensemble import RandomForestClassifier  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402
from sklearn.model_selection import GridSearchCV, KFold, cross_val_score  # noqa: E402
from sklearn.tree import DecisionTreeClassifier  # noqa: E402

import cyjob  # noqa: E402

BACKEND = cyjob.register_joblib_backend()


class Counting(BACKEND):
    """The cyjob backend, counting the batches joblib hands it."""

    submitted = 0

    def submit(self, func, callback=None):
        type(self).submitted += 1
        return super().submit(func, callback)


joblib.register_parallel_backend("cyjob-counting", Counting)

FIT_THREADS = []


class RecordingTree(DecisionTreeClassifier):
    """A decision tree that notes which thread fitted it."""

    def fit(self, X, y, **kwargs):
        FIT_THREADS.append(threading.current_thread().name)
        return super().fit(X, y, **kwargs)


@pytest.fixture(scope="module")
def data():
    return make_classification(n_samples=200, n_features=8, n_informative=4, random_state=0)


@pytest.fixture(autouse=True)
def reset_counters():
    Counting.submitted = 0
    FIT_THREADS.clear()


def test_cross_val_score_matches_sequential(data):
    X, y = data
    cv = KFold(10, shuffle=True, random_state=0)
    expected = cross_val_score(RecordingTree(random_state=0), X, y, cv=cv, n_jobs=1)
    FIT_THREADS.clear()
    # prefer="threads": on cyjob's threads (unhinted, the call is measured and
    # may go to processes: test_joblib_bridge.py checks the routing).
    with joblib.parallel_config(backend="cyjob", n_jobs=2, prefer="threads"):
        got = cross_val_score(RecordingTree(random_state=0), X, y, cv=cv)
    np.testing.assert_array_equal(got, expected)
    assert len(FIT_THREADS) == 10
    assert all(name.startswith("cyjob-worker") for name in FIT_THREADS), set(FIT_THREADS)


def test_grid_search_matches_sequential(data):
    X, y = data
    grid = {"max_depth": [1, 2, 3, 5, None], "min_samples_leaf": [1, 4, 16]}
    sequential = GridSearchCV(RecordingTree(random_state=0), grid, cv=4, n_jobs=1).fit(X, y)
    FIT_THREADS.clear()
    with joblib.parallel_config(backend="cyjob-counting", n_jobs=2, prefer="threads"):
        parallel = GridSearchCV(RecordingTree(random_state=0), grid, cv=4).fit(X, y)
    assert parallel.best_params_ == sequential.best_params_
    for key in ("mean_test_score", "std_test_score", "rank_test_score"):
        np.testing.assert_array_equal(parallel.cv_results_[key], sequential.cv_results_[key])
    np.testing.assert_array_equal(parallel.predict(X), sequential.predict(X))
    assert Counting.submitted >= 1
    # 15 candidates x 4 folds, plus the refit in the caller's thread
    assert len(FIT_THREADS) == 61
    assert sum(name.startswith("cyjob-worker") for name in FIT_THREADS) == 60


def test_grid_search_over_a_linear_model(data):
    X, y = data
    grid = {"C": [0.01, 0.1, 1.0, 10.0]}
    sequential = GridSearchCV(LogisticRegression(), grid, cv=3, n_jobs=1).fit(X, y)
    with joblib.parallel_config(backend="cyjob", n_jobs=2):
        parallel = GridSearchCV(LogisticRegression(), grid, cv=3).fit(X, y)
    np.testing.assert_allclose(parallel.cv_results_["mean_test_score"],
                               sequential.cv_results_["mean_test_score"])
    assert parallel.best_params_ == sequential.best_params_


def test_random_forest_n_jobs_2_matches_sequential(data):
    X, y = data
    sequential = RandomForestClassifier(n_estimators=30, random_state=0, n_jobs=1).fit(X, y)
    with joblib.parallel_config(backend="cyjob-counting"):
        parallel = RandomForestClassifier(n_estimators=30, random_state=0, n_jobs=2).fit(X, y)
        fit_batches = Counting.submitted
        proba = parallel.predict_proba(X)
    assert fit_batches >= 1
    assert Counting.submitted > fit_batches  # predict_proba ran on cyjob too
    np.testing.assert_array_equal(proba, sequential.predict_proba(X))
    np.testing.assert_array_equal(parallel.feature_importances_, sequential.feature_importances_)
