"""scikit-learn on cyjob through joblib: many small tasks.

Runs the same scikit-learn workloads under joblib's "loky" and "threading"
backends and under cyjob's joblib backend ("cyjob", see
``cyjob.register_joblib_backend``), with n_jobs=2, plus a sequential run
(n_jobs=1); contenders are interleaved in one run (``cyjob.bench.interleaved``).
Prints a markdown table of median times and ratios.

    python benchmarks/bench_sklearn.py [--rounds N]
"""

import argparse
import sys

import joblib
from sklearn.datasets import make_classification
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, KFold, cross_val_score
from sklearn.tree import DecisionTreeClassifier

import cyjob
from cyjob.bench import Report, interleaved

N_JOBS = 2
BACKENDS = ("loky", "threading", "cyjob")


def grid_search(X, y, backend, n_jobs):
    """60 candidates x 5 folds = 300 fits of a small tree (~1 ms each)."""
    grid = {"max_depth": [1, 2, 3, 4, 5, 6, 8, 10, 12, None],
            "min_samples_leaf": [1, 2, 4, 8, 16, 32]}

    def run():
        with joblib.parallel_config(backend=backend, n_jobs=n_jobs):
            GridSearchCV(DecisionTreeClassifier(random_state=0), grid, cv=5).fit(X, y)
    return run


def many_folds(X, y, backend, n_jobs):
    """cross_val_score with 200 folds of a fast linear model."""
    cv = KFold(200, shuffle=True, random_state=0)

    def run():
        with joblib.parallel_config(backend=backend, n_jobs=n_jobs):
            cross_val_score(LogisticRegression(max_iter=200), X, y, cv=cv)
    return run


def forest(X, y, backend, n_jobs):
    """RandomForestClassifier: 400 small trees fitted, then predict_proba
    (scikit-learn asks joblib for threads here; tree building releases the GIL)."""
    def run():
        with joblib.parallel_config(backend=backend, n_jobs=n_jobs):
            model = RandomForestClassifier(n_estimators=400, max_depth=6, random_state=0)
            model.fit(X, y).predict_proba(X)
    return run


WORKLOADS = {
    "GridSearchCV, 300 tree fits": grid_search,
    "cross_val_score, 200 folds": many_folds,
    "RandomForest, 400 trees": forest,
}


def sklearn_report(rounds=5):
    cyjob.register_joblib_backend()
    X, y = make_classification(n_samples=400, n_features=10, n_informative=5,
                               random_state=0)
    report = Report(f"scikit-learn through joblib, n_jobs={N_JOBS} "
                    f"({cyjob.cpu_count()} CPUs), median of {rounds} interleaved rounds")
    for title, workload in WORKLOADS.items():
        contenders = {"sequential": workload(X, y, "sequential", 1)}
        for backend in BACKENDS:
            contenders[backend] = workload(X, y, backend, N_JOBS)
        t = interleaved(contenders, rounds=rounds)
        for name, seconds in t.items():
            report.add(f"{title}: {name}", seconds * 1e3, unit=" ms")
        report.add(f"{title}: cyjob / joblib loky", t["cyjob"] / t["loky"])
        report.add(f"{title}: cyjob / joblib threading", t["cyjob"] / t["threading"])
        report.add(f"{title}: cyjob / sequential", t["cyjob"] / t["sequential"])
    return report


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    report = sklearn_report(rounds=args.rounds)
    report.print()
    sys.exit(1 if report.failed else 0)
