"""Loading files from untrusted sources: ``load(..., trusted=False)``.

Unpickling calls whatever functions and classes the stream names.  An
untrusted load resolves a name only if it is on the list below (builtin
containers and scalars, numpy arrays, dtypes and scalars) or on the
caller's ``allowed`` list; any other name raises :class:`UntrustedTypeError`
when the stream names it, before anything it refers to is imported or run.
"""

import pickle

#: Names that build data and run no code of their own: builtin containers
#: and scalars, the copyreg helpers that build instances of classes that were
#: themselves allowed, and numpy's array, dtype and scalar constructors.
SAFE_NAMES = frozenset(
    [("builtins", n) for n in (
        "bool", "int", "float", "complex", "str", "bytes", "bytearray", "list", "tuple",
        "dict", "set", "frozenset", "slice", "range", "object")]
    + [("collections", n) for n in ("OrderedDict", "defaultdict", "deque", "Counter")]
    + [("copyreg", n) for n in ("_reconstructor", "__newobj__", "__newobj_ex__")]
    + [("_codecs", "encode")]  # how protocol 2 pickles bytes
    + [(m, n) for m in ("numpy._core.multiarray", "numpy.core.multiarray")
       for n in ("_reconstruct", "scalar")]
    + [("numpy", "ndarray"), ("numpy", "dtype")]
)


class UntrustedTypeError(pickle.UnpicklingError):
    """An untrusted load met a name that it is not allowed to resolve."""


def _dotted(entry):
    if isinstance(entry, str) and entry.endswith(".*"):
        return entry[:-2], "*"
    if isinstance(entry, str):
        module, sep, name = entry.replace(":", ".").rpartition(".")
        if not sep or not module or not name:
            raise ValueError(f"allowed: {entry!r} is not a 'module.name' string")
        return module, name
    module = getattr(entry, "__module__", None)
    name = getattr(entry, "__qualname__", None)
    if not isinstance(module, str) or not isinstance(name, str):
        raise TypeError(f"allowed: {entry!r} is neither a class, a function nor a "
                        "'module.name' string")
    return module, name


class Policy:
    """Which names an untrusted load may resolve.

    Parameters
    ----------
    allowed : iterable of type, function or str, or None
        Further classes or functions, or their ``"module.qualname"``;
        ``"package.*"`` lets through every name of a package and its modules.
    name : str
        The file, for error messages.
    """

    def __init__(self, allowed=(), name="the file"):
        if allowed is None:  # nothing beyond the safe names, as ()
            allowed = ()
        elif isinstance(allowed, (str, type)):
            allowed = [allowed]
        try:
            entries = list(allowed)
        except TypeError:
            raise TypeError("allowed must be an iterable of classes, functions or "
                            f"'module.name' strings, or None, got {allowed!r}") from None
        pairs = [_dotted(a) for a in entries]
        self.extra = frozenset(p for p in pairs if p[1] != "*")
        self.packages = tuple(m for m, n in pairs if n == "*")
        self.name = name

    def allows(self, module, name):
        key = (module, name)
        if key in SAFE_NAMES or key in self.extra:
            return True
        return any(module == p or module.startswith(p + ".") for p in self.packages)

    def check(self, module, name):
        """Raise UntrustedTypeError unless ``module.name`` may be resolved."""
        if not self.allows(module, name):
            raise UntrustedTypeError(
                f"{self.name} refers to {module}.{name}, which an untrusted load "
                "(trusted=False) does not resolve: only builtin containers and "
                "scalars, numpy arrays and dtypes, and the types listed in "
                "allowed=[...] are let through")
