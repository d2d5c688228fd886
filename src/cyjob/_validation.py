"""Checks and conversions for Parallel's parameters, run before any work starts."""

import ast
import functools
import numbers
import operator

RETURN_AS = ("list", "generator", "generator_unordered")
MMAP_MODES = (None, "r+", "r", "w+", "c")
PREFER = (None, "threads", "processes")
REQUIRE = (None, "sharedmem")

_BINOPS = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
    ast.Div: operator.truediv, ast.FloorDiv: operator.floordiv,
    ast.Pow: operator.pow, ast.Mod: operator.mod,
}
_UNARY = {ast.UAdd: operator.pos, ast.USub: operator.neg}


def _is_int(value):
    return type(value) is int or (
        isinstance(value, numbers.Integral) and not isinstance(value, bool))


def check_inner_max_num_threads(value):
    """None or a positive int: the threads each worker's BLAS/OpenMP may start."""
    if value is not None and (not _is_int(value) or value < 1):
        raise ValueError(f"inner_max_num_threads must be None or a positive int, got {value!r}")
    return value


def check_n_jobs(n_jobs):
    """None (use the configured value) or a non-zero int.

    As joblib does, a float or a numeric string is converted with ``int()``
    (``n_jobs=cpu_count() / 2`` works); a bool is refused.
    """
    if n_jobs is None:
        return None
    if type(n_jobs) is not int:
        if isinstance(n_jobs, bool) or not isinstance(n_jobs, (numbers.Real, str)):
            raise TypeError(f"n_jobs must be an int or None, got {type(n_jobs).__name__} {n_jobs!r}")
        try:
            n_jobs = int(n_jobs)
        except (TypeError, ValueError, OverflowError):
            raise ValueError(f"n_jobs could not be converted to int: got {n_jobs!r}") from None
    if n_jobs == 0:
        raise ValueError("n_jobs == 0 in Parallel has no meaning: use a positive number of "
                         "workers, or a negative one counted from the number of CPUs")
    return n_jobs


# Workers a backend may be asked for, at most: the largest C int, past which
# joblib's own process backends fail with an OverflowError at call time (and
# no machine runs that many threads or processes anyway).
N_WORKERS_MAX = (1 << 31) - 1


def check_n_workers(n_workers, n_jobs):
    """ValueError now for an ``n_jobs`` that asks a backend for more workers
    than ``N_WORKERS_MAX``, rather than an OverflowError of the core's when
    the call starts them."""
    if n_workers > N_WORKERS_MAX:
        raise ValueError(f"n_jobs={n_jobs!r} asks for more workers than any machine runs: "
                         f"use at most {N_WORKERS_MAX}, or -1 for every CPU")
    return n_workers


# Tasks per batch at most: no input is that long, so a larger size means
# "the whole input", and the core's Py_ssize_t arithmetic on sizes (3 list
# items per task) cannot overflow into a negative or empty batch.
BATCH_SIZE_MAX = 1 << 40


def check_batch_size(batch_size):
    if batch_size == "auto":
        return 0
    if not _is_int(batch_size) or batch_size <= 0:
        raise ValueError(f"batch_size must be 'auto' or a positive integer, got {batch_size!r}")
    return min(int(batch_size), BATCH_SIZE_MAX)


def check_max_batch_size(max_batch_size):
    if max_batch_size is None:
        return None
    if not _is_int(max_batch_size) or max_batch_size <= 0:
        raise ValueError(f"max_batch_size must be None or a positive integer, got {max_batch_size!r}")
    return min(int(max_batch_size), BATCH_SIZE_MAX)


def check_choice(name, value, choices):
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices!r}, got {value!r}")
    return value


def check_verbose(verbose):
    if type(verbose) is not int and not isinstance(verbose, numbers.Real):
        raise TypeError(f"verbose must be a number, got {type(verbose).__name__}")
    return verbose


def check_timeout(timeout):
    if timeout is None:
        return None
    if not isinstance(timeout, numbers.Real) or isinstance(timeout, bool):
        raise TypeError(f"timeout must be None or a number of seconds, got {type(timeout).__name__}")
    if not timeout > 0:
        raise ValueError(f"timeout must be > 0 seconds, got {timeout!r}")
    return timeout


def _eval_node(node):
    if isinstance(node, ast.Constant) and _is_int(node.value) or (
            isinstance(node, ast.Constant) and isinstance(node.value, float)):
        return node.value
    if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
        left, right = _eval_node(node.left), _eval_node(node.right)
        if isinstance(node.op, ast.Pow) and abs(right) > 64:
            raise ValueError("exponent too large")
        return _BINOPS[type(node.op)](left, right)
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _UNARY[type(node.op)](_eval_node(node.operand))
    raise ValueError(f"unsupported element {type(node).__name__}")


# Batches in flight at most: larger pre_dispatch values (n_jobs*10**30) mean
# "all" and must not overflow the core's Py_ssize_t window.
PRE_DISPATCH_MAX = 1 << 40


def check_pre_dispatch(pre_dispatch):
    """Validate now; return a function of n_jobs giving the count, or None for 'all'."""
    if pre_dispatch == "all":
        return None
    if type(pre_dispatch) is str:
        return _check_pre_dispatch_expression(pre_dispatch)
    if _is_int(pre_dispatch):
        if pre_dispatch <= 0:
            raise ValueError(f"pre_dispatch must be positive, got {pre_dispatch!r}")
        count = min(int(pre_dispatch), PRE_DISPATCH_MAX)
        return lambda n_jobs: count
    if not isinstance(pre_dispatch, str):
        raise TypeError("pre_dispatch must be 'all', a positive int or an arithmetic "
                        f"expression of n_jobs such as '2*n_jobs', got {pre_dispatch!r}")
    return _check_pre_dispatch_expression(str(pre_dispatch))


@functools.lru_cache(maxsize=64)
def _check_pre_dispatch_expression(pre_dispatch):
    # Cached: every Parallel() checks its pre_dispatch, nearly always "2 * n_jobs".
    if len(pre_dispatch) > 30:
        raise ValueError(f"pre_dispatch expression {pre_dispatch!r} is too long (30 characters at most)")
    _eval_pre_dispatch(pre_dispatch, 2)  # fail now, not at call time
    return functools.partial(_eval_pre_dispatch, pre_dispatch)


@functools.lru_cache(maxsize=64)
def _eval_pre_dispatch(pre_dispatch, n_jobs):
    try:
        tree = ast.parse(pre_dispatch.replace("n_jobs", str(n_jobs)), mode="eval")
        value = _eval_node(tree.body)
    except (SyntaxError, ValueError, TypeError, ZeroDivisionError, OverflowError) as exc:
        raise ValueError(f"pre_dispatch={pre_dispatch!r} is not a safe arithmetic "
                         f"expression of n_jobs: {exc}") from None
    if not value >= 1:
        raise ValueError(f"pre_dispatch={pre_dispatch!r} evaluates to {value!r}; it must be >= 1")
    # Beyond any count of batches (even infinite): it means "all".
    return PRE_DISPATCH_MAX if value >= PRE_DISPATCH_MAX else int(value)


_UNITS = {"K": 2**10, "M": 2**20, "G": 2**30}


def check_max_nbytes(max_nbytes):
    """None, a byte count, or a string like '1M' (K, M, G)."""
    if max_nbytes is None:
        return None
    if max_nbytes == "1M":
        return 1 << 20
    if _is_int(max_nbytes):
        if max_nbytes < 0:
            raise ValueError(f"max_nbytes must be >= 0, got {max_nbytes!r}")
        return int(max_nbytes)
    if isinstance(max_nbytes, str):
        text = max_nbytes.strip().upper()
        try:
            if text and text[-1] in _UNITS:
                return int(float(text[:-1]) * _UNITS[text[-1]])
            return int(text)
        except (ValueError, OverflowError):  # "infM": int() of an infinite float
            pass
    raise ValueError(f"max_nbytes must be None, an int or a string like '1M', got {max_nbytes!r}")


def check_temp_folder(temp_folder):
    if temp_folder is not None and not isinstance(temp_folder, (str, bytes)) and not hasattr(temp_folder, "__fspath__"):
        raise TypeError(f"temp_folder must be None or a path, got {type(temp_folder).__name__}")
    return temp_folder
