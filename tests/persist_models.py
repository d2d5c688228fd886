"""A user class holding arrays, importable without joblib (files that hold
it are loaded in subprocesses where joblib cannot be imported)."""

import numpy as np


class Model:
    def __init__(self):
        self.coef = np.arange(12.0).reshape(3, 4)
        self.fortran = np.asfortranarray(self.coef)
        self.labels = np.array(["a", "bb", "c"], dtype=object)
        self.meta = {"name": "m", "shape": (3, 4)}
