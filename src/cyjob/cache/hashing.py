"""``cyjob.hash``: a content hash of any picklable object.

The object is serialised by CPython's C pickler (not joblib's pure-Python
one) straight into an xxh3_128 state, in "fast" mode: no memo, so equal
values hash equally whatever their identity or sharing (``['aa', 'aa']`` and
``['aa', 'aaZ'[:2]]``, a dtype and its unpickled copy).  A ``persistent_id``
hook (filtered in C by ``_canon.PidFilter``) replaces the few objects whose
serialisation would depend on chance by a canonical stand-in:

- dicts (and dict subclasses) by their items in a canonical order, sets and
  frozensets (and subclasses) by their elements in a canonical order, so
  neither insertion order nor ``PYTHONHASHSEED`` enters the hash;
- numpy arrays without Python objects by ``(class, dtype, shape, strides)``
  and the xxh3_128 digest of their raw memory, taken in place (no copy for
  C- or F-contiguous arrays; xxhash releases the GIL while it reads), as
  joblib hashes them; subclasses with a reduction of their own (masked
  arrays) are pickled as they say, so that their extra state (the mask)
  enters the hash.

The equivalence classes are joblib.hash's (its test_hashing.py cases), with
three flaws fixed: a frozenset's hash does not depend on the hash seed,
equal values hash equally whatever object sharing they have (joblib #1283),
and a masked array's mask counts (joblib ignores it, and fails on masked
arrays of items wider than a byte).
The hex values themselves differ from joblib's (another serialiser and
another hash function).
"""

import pickle
import sys

import xxhash

from cyjob.cache._canon import PidFilter, is_plain

__all__ = ["hash"]

# Protocol 5 frames the stream, so the C pickler hands the hash state 64 KiB
# pieces as it goes instead of one buffer of the whole stream at the end.
_PROTOCOL = 5
_HASH_NAMES = ("xxh3_128", "md5", "sha1")
# Key types whose natural order is total, so that sorting by it is canonical.
_NATURALLY_ORDERED = ({str}, {bytes}, {int})


class _Sink:
    """The file the pickler writes to: each frame goes into the hash."""

    __slots__ = ("write",)

    def __init__(self, state):
        self.write = state.update


def _canonical(keys):
    """``keys`` (distinct values) in an order that depends on their values only."""
    if len(keys) < 2:
        return list(keys)
    if set(map(type, keys)) in _NATURALLY_ORDERED:
        return sorted(keys)
    # Mixed or partially ordered types (frozensets compare by inclusion,
    # Decimal('NaN') not at all): order by each key's own digest.
    return sorted(keys, key=_digest)


def _sorted_items(d):
    return [(k, d[k]) for k in _canonical(list(d))]


def _canonical_pid(obj, coerce_mmap=False):
    """The stand-in pickled instead of ``obj``, or None to pickle ``obj``."""
    kind = type(obj)
    if kind is dict:
        return ("dict", _sorted_items(obj))
    if kind is set or kind is frozenset:
        return (kind.__name__, _canonical(obj))
    np = sys.modules.get("numpy")
    if np is not None and isinstance(obj, np.ndarray) and _raw_memory_is_whole(obj, np):
        return _array_pid(obj, np, coerce_mmap)
    if isinstance(obj, dict):
        # OrderedDict, defaultdict, ...: as joblib, the items in canonical
        # order, the rest of the reduction as the class gives it.
        rv = obj.__reduce_ex__(_PROTOCOL)
        if isinstance(rv, tuple) and len(rv) >= 5 and rv[4] is not None:
            listitems = None if rv[3] is None else list(rv[3])
            return ("reduce",) + rv[:3] + (listitems, _sorted_items(obj))
        return None
    if isinstance(obj, (set, frozenset)):
        return ("set-like", kind, _canonical(obj), getattr(obj, "__dict__", None))
    return None


def _raw_memory_is_whole(obj, np):
    """True if ``(class, dtype, shape, strides)`` and the raw memory are all
    of the array: no Python objects in it, and a class that pickles as a
    plain ndarray does (memmap, matrix, recarray ...).  A class with its own
    reduction keeps more state (a masked array's mask, whose memory does
    not even match the data's layout): it is pickled as it says."""
    kind = type(obj)
    return (not obj.dtype.hasobject and kind.__reduce__ is np.ndarray.__reduce__
            and kind.__reduce_ex__ is np.ndarray.__reduce_ex__)


def _array_pid(obj, np, coerce_mmap):
    if obj.shape == ():
        flat = obj.reshape(1)
    elif obj.flags.c_contiguous:
        flat = obj
    elif obj.flags.f_contiguous:
        flat = obj.T
    else:
        flat = obj.flatten()  # other layouts: a copy, as joblib
    # Viewed as bytes: memoryview cannot export some dtypes (datetime64).
    digest = xxhash.xxh3_128_digest(memoryview(flat.reshape(-1).view(np.uint8)))
    klass = type(obj)
    if coerce_mmap and isinstance(obj, np.memmap):
        klass = np.ndarray
    return ("HASHED", klass, obj.dtype, obj.shape, obj.strides, digest)


_FILTER = PidFilter(_canonical_pid)
_FILTER_COERCE = PidFilter(lambda obj: _canonical_pid(obj, True))


def _arrays_only_pid(obj, coerce_mmap=False):
    np = sys.modules.get("numpy")
    if np is not None and isinstance(obj, np.ndarray) and _raw_memory_is_whole(obj, np):
        return _array_pid(obj, np, coerce_mmap)
    return None


def _dump(obj, state, coerce_mmap=False):
    """Feed ``obj``'s canonical serialisation into ``state``."""
    pickler = pickle.Pickler(_Sink(state), _PROTOCOL)
    pickler.fast = True  # no memo: value semantics, see the module docstring
    if not is_plain(obj):
        pickler.persistent_id = _FILTER_COERCE if coerce_mmap else _FILTER
    try:
        pickler.dump(obj)
    except (ValueError, RecursionError) as exc:
        if isinstance(exc, ValueError) and "cyclic" not in str(exc):
            raise
        # A self-referencing object: the memo-less pickler refuses it and the
        # canonical stand-ins (fresh objects each time) would recurse for
        # ever.  Hash it with the memo and insertion order: deterministic
        # for one object, but sharing and order then enter its hash.
        state.reset()
        pickler = pickle.Pickler(_Sink(state), _PROTOCOL)
        pickler.persistent_id = PidFilter(lambda o: _arrays_only_pid(o, coerce_mmap))
        pickler.dump(obj)


def _digest(obj):
    state = xxhash.xxh3_128()
    _dump(obj, state)
    return state.digest()


class _HashlibState:
    """A hashlib object with xxhash's ``reset``."""

    def __init__(self, name):
        import hashlib  # only for these two names; ~4 ms at import

        self._new = hashlib.new
        self._name = name
        self.reset()

    def reset(self):
        self._state = self._new(self._name, usedforsecurity=False)
        self.update = self._state.update
        self.hexdigest = self._state.hexdigest


def hash(obj, hash_name="xxh3_128", coerce_mmap=False):
    """Quick calculation of a hash to identify uniquely Python objects
    containing numpy arrays.

    Deterministic across processes, runs and ``PYTHONHASHSEED``: dict items
    and set elements are taken in a canonical order and no id or address
    enters the hash.  numpy arrays are hashed on their raw memory, in place.

    Parameters
    ----------
    obj : object
        Any picklable object.
    hash_name : {'xxh3_128', 'md5', 'sha1'}, default='xxh3_128'
        The hash function applied to the canonical serialisation.  xxh3_128
        is a fast 128-bit non-cryptographic hash; 'md5' and 'sha1' are
        accepted for joblib's signature (the values differ from joblib's
        all the same: the serialisation differs).
    coerce_mmap : bool, default=False
        Make no difference between ``np.memmap`` and ``np.ndarray`` objects.

    Returns
    -------
    str
        The hexadecimal digest (32 characters for xxh3_128 and md5).

    Raises
    ------
    ValueError
        If ``hash_name`` is not one of the above.
    pickle.PicklingError
        If ``obj`` cannot be pickled (a local function, a lock, ...).
    """
    if hash_name not in _HASH_NAMES:
        raise ValueError(
            "Valid options for 'hash_name' are {}. Got hash_name={!r} "
            "instead.".format(_HASH_NAMES, hash_name))
    state = xxhash.xxh3_128() if hash_name == "xxh3_128" else _HashlibState(hash_name)
    try:
        _dump(obj, state, coerce_mmap)
    except (pickle.PicklingError, AttributeError, TypeError) as exc:
        raise pickle.PicklingError(
            "PicklingError while hashing %r: %r" % (obj, exc)) from exc
    return state.hexdigest()
