"""``cyjob.Memory``: joblib's disk cache of function results, with one
computation per key across threads and processes, a size bound, crash-safe
entries and invalidation by the helpers a function calls.

The hot path (a hit) is: bind the call to the signature (a tuple, no
``inspect`` on simple signatures), hash it (C pickler + xxh3_128), one
``open`` + ``readinto`` of the entry, one C unpickle.  The function's
version (its code, defaults and helpers, see ``invalidation``) is checked
once per process and per cached function, not per call.
"""

import datetime
import functools
import inspect
import logging
import numbers
import os
import pickle
import sys
import time
import types
import warnings
from collections.abc import Mapping
from pprint import pformat

import xxhash

from cyjob.cache.hashing import _dump
from cyjob.cache.invalidation import describe_change, function_version
from cyjob.cache.store import (CorruptEntry, LocalStoreBackend, _compress_spec,
                               bytes_from_limit, make_store, read_entry)

__all__ = ["Memory", "MemorizedFunc", "AsyncMemorizedFunc", "MemorizedResult",
           "NotMemorizedFunc", "AsyncNotMemorizedFunc", "NotMemorizedResult",
           "expires_after"]

_MMAP_MODES = (None, "r+", "r", "w+", "c")
_POSITIONAL = inspect.Parameter.POSITIONAL_OR_KEYWORD
_logger = logging.getLogger("cyjob.memory")


def _asyncio():
    import asyncio  # ~20 ms to import: only async cached functions need it

    return asyncio


def _check_mmap_mode(mmap_mode):
    if mmap_mode not in _MMAP_MODES:
        raise ValueError("mmap_mode must be one of %s, got %r" % (_MMAP_MODES, mmap_mode))


def _format_time(t):
    return "%.1fs, %.1fmin" % (t, t / 60.0)


def _format_arg(arg):
    text = pformat(arg, indent=2)
    return text if len(text) <= 1500 else text[:700] + "..."


def _func_name_parts(func, for_id=False):
    """(module parts, name) as joblib's get_func_name names a function;
    ``for_id`` adds the first line to the names of lambdas and local
    functions (two of them in one module must not share a folder)."""
    base = func
    if isinstance(base, functools.partial):
        base = base.func
    if inspect.ismethod(base):
        base = base.__func__
    module = getattr(base, "__module__", None)
    if not isinstance(module, str):
        module = type(base).__module__
    name = getattr(base, "__qualname__", None) or getattr(base, "__name__", None)
    if not isinstance(name, str):
        name = type(base).__qualname__
    if module == "__main__":
        main_file = getattr(sys.modules.get("__main__"), "__file__", None)
        if main_file:
            module = "__main__-" + os.path.splitext(os.path.basename(main_file))[0]
    parts = module.split(".")
    code = getattr(inspect.unwrap(base) if callable(base) else base, "__code__", None)
    if for_id and code is not None and ("<lambda>" in name or "<locals>" in name):
        # Two lambdas of one module share a name: their line tells them apart.
        name = "%s-%d" % (name, code.co_firstlineno)
    return parts, name


def _func_id(func):
    parts, name = _func_name_parts(func, for_id=True)
    return os.path.join(*parts, name.replace("/", "_"))


def _is_callable_object(obj):
    """An instance of a Python class with a ``__call__`` method, other than
    a decorator's wrapper (``__wrapped__``: the function it wraps is what
    the function's id and version name, and it often pickles only by that
    function's name, which the wrapper has taken)."""
    return (not isinstance(obj, (type, types.FunctionType, types.MethodType,
                                 types.BuiltinFunctionType, functools.partial))
            and isinstance(getattr(type(obj), "__call__", None), types.FunctionType)
            and not hasattr(obj, "__wrapped__"))


class _Binder:
    """Turns a call's (args, kwargs) into the object whose hash keys it:
    the parameter values in signature order, defaults applied, ignored
    ones left out, so ``f(1, b=2)``, ``f(1, 2)`` and ``f(1)`` (with b=2 as
    default) are one key."""

    def __init__(self, func, ignore):
        self.func = func
        self.ignore = frozenset(ignore)
        self.prefix = ()
        target = func
        inner = func  # what the call runs: a partial's function
        bound_by_partial = {}  # {name: value} of the arguments a partial binds
        if isinstance(func, functools.partial):
            inner = func.func
            if self.ignore:
                try:
                    bound_by_partial = inspect.signature(inner).bind_partial(
                        *func.args, **func.keywords).arguments
                except (TypeError, ValueError):
                    pass
            if self.ignore.intersection(bound_by_partial):
                # An ignored argument stays out of the key also when the
                # partial binds it (joblib accepts the name).
                self.prefix += (tuple((name, value) for name, value
                                      in bound_by_partial.items()
                                      if name not in self.ignore),)
            else:
                self.prefix += (func.args, sorted(func.keywords.items()))
        bound_name = None  # a bound method's first parameter ('self', 'cls')
        if inspect.ismethod(inner):
            try:
                bound_name = next(iter(inspect.signature(inner.__func__).parameters), None)
            except (TypeError, ValueError):
                pass
            if bound_name is None or bound_name not in self.ignore:
                self.prefix += (inner.__self__,)  # by value, as joblib
        elif _is_callable_object(inner):
            # Its __call__ is a method bound to it: its state is an argument
            # (the function's id only names its class, Mul(2) and Mul(3)
            # must not share entries).
            self.prefix += (inner,)
        try:
            self.sig = inspect.signature(target)
        except (TypeError, ValueError):
            self.sig = None
        # The bound instance can be ignored as joblib allows it (the pattern
        # ``memory.cache(self.method, ignore=['self'])``): its name is not in
        # the bound method's signature.
        names = [] if self.sig is None else list(self.sig.parameters)
        if bound_name is not None:
            names.append(bound_name)
        names.extend(bound_by_partial)
        for name in self.ignore:
            if self.sig is not None and name not in names:
                raise ValueError("Ignore list: argument '%s' is not defined for function %s"
                                 % (name, getattr(func, "__name__", func)))
        params = [] if self.sig is None else list(self.sig.parameters.values())
        self.simple = (self.sig is not None and not self.ignore
                       and all(p.kind is _POSITIONAL for p in params))
        self.n = len(params)
        self.names = tuple(p.name for p in params)
        self.defaults = tuple(p.default for p in params)
        # The parameters up to the last one without a default must be given
        # (counted by identity: `empty in defaults` would compare each
        # default with ==, which a numpy array default cannot answer).
        self.n_required = max((i + 1 for i, p in enumerate(params)
                               if p.default is inspect.Parameter.empty), default=0)

    def __eq__(self, other):
        # Rebuilt from the same function and ignore list, it binds the same.
        return (type(other) is _Binder and self.func == other.func
                and self.ignore == other.ignore)

    __hash__ = None

    def key_object(self, args, kwargs):
        if not kwargs and self.simple:
            n = len(args)
            if n == self.n:
                return self.prefix + args
            if self.n_required <= n < self.n:
                return self.prefix + args + self.defaults[n:]
        if self.sig is None:
            return self.prefix + (args, sorted(kwargs.items()))
        try:
            bound = self.sig.bind(*args, **kwargs)
        except TypeError as exc:
            raise _bad_call(self.func, self.sig, args, kwargs, exc) from None
        bound.apply_defaults()
        values = []
        for name, value in bound.arguments.items():
            if name in self.ignore:
                continue
            kind = self.sig.parameters[name].kind
            if kind is inspect.Parameter.VAR_KEYWORD:
                value = {k: v for k, v in value.items() if k not in self.ignore}
            values.append(value)
        return self.prefix + tuple(values)

    def arguments(self, args, kwargs):
        """{name: value} of the call, for metadata and messages."""
        if not kwargs and self.simple and len(args) <= self.n:
            return dict(zip(self.names, args + self.defaults[len(args):]))
        if self.sig is None:
            return dict(enumerate(args), **kwargs)
        try:
            bound = self.sig.bind(*args, **kwargs)
        except TypeError:
            return dict(enumerate(args), **kwargs)
        bound.apply_defaults()
        return {k: v for k, v in bound.arguments.items() if k not in self.ignore}


class BadCallError(ValueError, TypeError):
    """Arguments that do not fit the cached function's signature: joblib
    raises ValueError here, Python a TypeError; this is both."""


def _bad_call(func, sig, args, kwargs, exc):
    name = getattr(func, "__name__", repr(func))
    text = str(exc)
    if "too many positional" in text:
        what = "Too many arguments for"
    elif "unexpected keyword" in text:
        what = "Too many keyword arguments for"
    elif "multiple values" in text:
        what = "An argument was given both as positional and as keyword for"
    else:
        what = "Wrong number of arguments for"
    called = ", ".join([repr(a) for a in args] + ["%s=%r" % kv for kv in kwargs.items()])
    return BadCallError("%s %s%s:\n    %s(%s) was called (%s)."
                        % (what, name, sig, name, called, text))


def _args_id(key_object, coerce_mmap, func):
    state = xxhash.xxh3_128()
    try:
        _dump(key_object, state, coerce_mmap)
    except (pickle.PicklingError, AttributeError, TypeError) as exc:
        # What cyjob.hash says of such an object, and whose arguments they are
        # (pickle's own error names only the type it met).
        name = _func_name_parts(func)[1]
        raise pickle.PicklingError("cyjob.Memory: the arguments of %s could not be hashed "
                                   "(they must be picklable): %r" % (name, exc)) from exc
    return state.hexdigest()


class NotMemorizedResult:
    """A result held in memory: what ``call_and_shelve`` returns without a
    cache (``location=None``)."""

    __slots__ = ("value", "valid")

    def __init__(self, value):
        self.value = value
        self.valid = True

    def get(self):
        if self.valid:
            return self.value
        raise KeyError("No value stored.")

    def clear(self):
        self.valid = False
        self.value = None

    def __repr__(self):
        if self.valid:
            return "%s(%s)" % (type(self).__name__, pformat(self.value))
        return type(self).__name__ + " with no value"

    def __getstate__(self):
        return {"valid": self.valid, "value": self.value}

    def __setstate__(self, state):
        self.valid = state["valid"]
        self.value = state["value"]


class NotMemorizedFunc:
    """The function itself, with MemorizedFunc's API (no cache)."""

    def __init__(self, func):
        self.func = func

    def __call__(self, *args, **kwargs):
        return self.func(*args, **kwargs)

    def call_and_shelve(self, *args, **kwargs):
        return NotMemorizedResult(self.func(*args, **kwargs))

    def __repr__(self):
        return "%s(func=%s)" % (type(self).__name__, self.func)

    def clear(self, warn=True):
        pass

    def call(self, *args, **kwargs):
        return self.func(*args, **kwargs), {}

    def check_call_in_cache(self, *args, **kwargs):
        return False


class AsyncNotMemorizedFunc(NotMemorizedFunc):
    async def call_and_shelve(self, *args, **kwargs):
        return NotMemorizedResult(await self.func(*args, **kwargs))


class MemorizedResult:
    """A reference to a cached result: small, picklable (usable in another
    process), ``get()`` reads the value, ``clear()`` drops it.

    Attributes
    ----------
    func_id, args_id : str
        The cached function's identifier and the hash of the arguments.
    """

    def __init__(self, store_backend, func_id, version, args_id, mmap_mode=None,
                 verbose=0, metadata=None):
        self.store_backend = store_backend
        self.func_id = func_id
        self.version = version
        self.args_id = args_id
        self.mmap_mode = mmap_mode
        self.verbose = verbose
        self._metadata = metadata

    @property
    def func(self):
        return self.func_id

    @property
    def metadata(self):
        if self._metadata is None:
            try:
                self._metadata = self.store_backend.read_meta(self.func_id, self.version,
                                                              self.args_id)
            except (OSError, CorruptEntry):
                self._metadata = {}
        return self._metadata

    @property
    def duration(self):
        return self.metadata.get("duration")

    def get(self):
        """Read the value from the cache and return it."""
        try:
            return self.store_backend.read(self.func_id, self.version, self.args_id,
                                           mmap_mode=self.mmap_mode)
        except (OSError, CorruptEntry, KeyError) as exc:
            path = self.store_backend.entry_path(self.func_id, self.version, self.args_id)
            if isinstance(exc, (FileNotFoundError, NotADirectoryError, KeyError)):
                # (joblib's words: the usual cause is clear(), not damage)
                raise KeyError("Non-existing item (may have been cleared).\nFile %s does "
                               "not exist" % (path,)) from exc
            raise KeyError(
                "Error while trying to load a MemorizedResult's value. It seems that "
                "this folder is corrupted : {}".format(path)) from exc

    def clear(self):
        """Clear the value from the cache."""
        self.store_backend.clear_item(self.func_id, self.version, self.args_id)

    def __repr__(self):
        return '{}(location="{}", func="{}", args_id="{}")'.format(
            type(self).__name__, self.store_backend.location, self.func_id, self.args_id)


class MemorizedFunc:
    """A function whose results are cached on disk (what ``Memory.cache``
    returns).

    Attributes
    ----------
    func : callable
        The original, undecorated, function.
    func_id : str
        Its identifier in the store (module path and name).
    ignore : list of str
        The arguments left out of the cache key.
    mmap_mode : {None, 'r+', 'r', 'w+', 'c'}
        How numpy arrays are loaded from the cache.
    """

    def __init__(self, func, location, backend="local", ignore=None, mmap_mode=None,
                 compress=False, verbose=1, timestamp=None, cache_validation_callback=None):
        if ignore is None:
            ignore = []
        if not isinstance(ignore, (list, tuple)):
            raise ValueError("ignore_lst must be a list of parameters to ignore %s "
                             "(type %s) was given" % (ignore, type(ignore)))
        _check_mmap_mode(mmap_mode)
        self.func = func
        self.ignore = list(ignore)
        self.mmap_mode = mmap_mode
        self.compress = compress
        self._verbose = verbose
        self.cache_validation_callback = cache_validation_callback
        self.timestamp = timestamp if timestamp is not None else time.time()
        self.store_backend = make_store(backend, location, verbose,
                                        {"compress": compress})
        self.func_id = _func_id(func)
        # The local store's entries are read here directly (the hot path).
        self._local = type(self.store_backend).read is LocalStoreBackend.read
        self._binder = _Binder(func, self.ignore)
        self._coerce = mmap_mode is not None
        self._version = None
        self._dir = None
        self._code = getattr(func, "__code__", None)
        try:
            functools.update_wrapper(self, func)
        except Exception:
            pass
        self.__doc__ = "Memoized version of %s" % (getattr(func, "__doc__", None),)

    # -- identity and version -------------------------------------------------
    def _check_version(self):
        """The function's version directory, checked against the store once
        per process (and again if ``func.__code__`` is reassigned)."""
        version = function_version(self.func)
        store = self.store_backend
        old = store.read_func_code(self.func_id)
        if old is None or old.get("version") != version.digest:
            if old is not None and self._verbose > 0:
                name = _func_name_parts(self.func)[1]
                print("[Memory] Function %s (identified by %s) has changed: %s; "
                      "clearing its cache" % (name, self.func_id,
                                              describe_change(old, version)))
            store.write_func_code(self.func_id, version.as_json(), keep_version=version.digest)
        self._set_version(version.digest)
        return version.digest

    def _set_version(self, digest):
        self._version = digest
        self._dir = os.path.join(self.store_backend.location, self.func_id, digest) + os.sep
        self._code = getattr(self.func, "__code__", None)

    def _current_version(self):
        if self._version is None or getattr(self.func, "__code__", None) is not self._code:
            return self._check_version()
        return self._version

    # -- lookup -----------------------------------------------------------------
    def _args_id(self, args, kwargs):
        return _args_id(self._binder.key_object(args, kwargs), self._coerce, self.func)

    def _lookup(self, version, args_id, args, kwargs):
        """(True, value) on a valid hit, else (False, None)."""
        path = self._dir + args_id
        callback = self.cache_validation_callback
        try:
            if not self._local:  # a registered backend reads its own way
                out = self.store_backend.read(self.func_id, version, args_id,
                                              mmap_mode=self.mmap_mode,
                                              with_meta=callback is not None)
            else:
                mmap_mode = None if self.store_backend.compress else self.mmap_mode
                out = read_entry(path, mmap_mode, with_meta=callback is not None, touch=True)
            if callback is None:
                value = out
            else:
                value, meta = out
                if not callback(meta):
                    self.store_backend.clear_item(self.func_id, version, args_id)
                    return False, None
        except (FileNotFoundError, NotADirectoryError, KeyError):
            return False, None
        except CorruptEntry as exc:
            warnings.warn("cyjob.Memory: the cache entry %s of %s is unreadable (%s); "
                          "recomputing it." % (path, self.func_id, exc), stacklevel=4)
            self.store_backend.clear_item(self.func_id, version, args_id)
            return False, None
        if self._verbose > 4:
            print("[Memory] %s cache loaded from %s" % (_func_name_parts(self.func)[1], path))
        return True, value

    def __call__(self, *args, **kwargs):
        version = self._version
        if version is None or getattr(self.func, "__code__", None) is not self._code:
            version = self._check_version()
        args_id = _args_id(self._binder.key_object(args, kwargs), self._coerce, self.func)
        if self._verbose >= 20:
            self._log_query(args_id, args, kwargs)
        hit, value = self._lookup(version, args_id, args, kwargs)
        if hit:
            return value
        return self._compute_once(version, args_id, args, kwargs, shelving=False)

    def _log_query(self, args_id, args, kwargs):
        logging.basicConfig(level=logging.INFO)
        name = _func_name_parts(self.func)[1]
        _logger.info("Querying %s with signature %s(%s).\n\n(argument hash %s)\n\n"
                     "The store location is %s." % (
                         name, name, ", ".join([_format_arg(a) for a in args] + [
                             "%s=%s" % (k, _format_arg(v)) for k, v in kwargs.items()]),
                         args_id, self._dir))

    def _compute_once(self, version, args_id, args, kwargs, shelving):
        # The local store at the current version, the common case, by path.
        path = self._dir + args_id if self._local and version == self._version else None
        lock = (self.store_backend.lock_at(path) if path is not None
                else self._lock(version, args_id))
        lock.acquire()
        stored = False
        try:
            # Another thread or process may have computed it meanwhile.  The
            # local store asks first whether the file exists (no exception
            # raised and caught: half the cost of a read attempt on a miss).
            if lock.usable and (path is None or os.access(path, os.F_OK)):
                hit, value = self._lookup(version, args_id, args, kwargs)
                if hit:
                    return self._shelved(version, args_id) if shelving else value
            if self._verbose > 0:
                self._before_call(args, kwargs)
            start = time.time()
            value = self.func(*args, **kwargs)
            value, stored, _ = self._store(version, args_id, args, kwargs, value, start, path)
        finally:
            lock.release(remove=stored)
        if shelving or (stored and self.mmap_mode is not None):
            return self._finish(version, args_id, value, stored, shelving)
        return value

    def _lock(self, version, args_id):
        store = self.store_backend
        if version == self._version and hasattr(store, "lock_at"):
            return store.lock_at(self._dir + args_id)
        return store.lock(self.func_id, version, args_id)

    def _write(self, version, args_id, value, meta, duration, path=None):
        store = self.store_backend
        if path is None and version == self._version and hasattr(store, "write_at"):
            path = self._dir + args_id
        if self._verbose > 10:
            # The function's verbosity, as joblib's (the store is the Memory's).
            print("Persisting in %s" % (path or self._entry_name(version, args_id)))
        if path is not None:
            return store.write_at(path, value, meta, duration)
        return store.write(self.func_id, version, args_id, value, meta, duration)

    def _entry_name(self, version, args_id):
        try:
            return self.store_backend.entry_path(self.func_id, version, args_id)
        except NotImplementedError:  # a registered backend need not have paths
            return "/".join([self.func_id, version, args_id])

    def _finish(self, version, args_id, value, stored, shelving):
        if shelving:
            if not stored:
                return NotMemorizedResult(value)
            return self._shelved(version, args_id)
        if stored and self.mmap_mode is not None and not self.store_backend.compress:
            # Map the output at the first call too, as later calls will.
            try:
                return self.store_backend.read(self.func_id, version, args_id,
                                               mmap_mode=self.mmap_mode)
            except (OSError, CorruptEntry):
                pass
        return value

    def _shelved(self, version, args_id, metadata=None):
        return MemorizedResult(self.store_backend, self.func_id, version, args_id,
                               mmap_mode=self.mmap_mode, verbose=self._verbose - 1,
                               metadata=metadata)

    def _before_call(self, args, kwargs):
        if self._verbose > 0:
            parts, name = _func_name_parts(self.func)
            arg_str = [_format_arg(a) for a in args]
            arg_str += ["%s=%s" % (k, _format_arg(v)) for k, v in kwargs.items()]
            print("%s\n[Memory] Calling %s...\n%s(%s)" % (
                80 * "_", ".".join([p for p in parts if p] + [name]), name, ", ".join(arg_str)))

    def _meta(self, args, kwargs):
        binder = self._binder
        try:
            if not kwargs and binder.simple and len(args) <= binder.n:
                # (Binder.arguments' fast case, without the intermediate dict)
                return {"input_args": dict(zip(binder.names, map(
                    repr, args + binder.defaults[len(args):])))}
            return {"input_args": {str(k): repr(v) for k, v in
                                   binder.arguments(args, kwargs).items()}}
        except Exception:
            return {"input_args": {}}

    def _compute(self, version, args_id, args, kwargs, func):
        self._before_call(args, kwargs)
        start = time.time()
        value = func(*args, **kwargs)
        return self._store(version, args_id, args, kwargs, value, start)

    def _store(self, version, args_id, args, kwargs, value, start, path=None):
        meta = self._meta(args, kwargs)
        duration = time.time() - start
        try:
            stored = self._write(version, args_id, value, meta, duration, path)
        except Exception as exc:  # an unpicklable result: return it, store nothing
            warnings.warn("cyjob.Memory could not store the result of %s: %r"
                          % (self.func_id, exc), stacklevel=4)
            stored = False
        duration = time.time() - start
        if self._verbose > 0:
            msg = "%s - %s" % (_func_name_parts(self.func)[1], _format_time(duration))
            print(max(0, 80 - len(msg)) * "_" + msg)
        meta.update(duration=duration, time=start)
        return value, stored, meta

    # -- public API ---------------------------------------------------------------
    def call_and_shelve(self, *args, **kwargs):
        """Call the function (or find its result in the cache) and return a
        reference to the cached result.

        Returns
        -------
        MemorizedResult or NotMemorizedResult
            ``.get()`` returns the value; the reference is picklable.
        """
        version = self._current_version()
        args_id = self._args_id(args, kwargs)
        if self._valid_entry(version, args_id):
            return self._shelved(version, args_id)
        return self._compute_once(version, args_id, args, kwargs, shelving=True)

    def _valid_entry(self, version, args_id):
        path = self._dir + args_id
        if not os.path.exists(path):
            return False
        if self.cache_validation_callback is None:
            return True
        try:
            meta = self.store_backend.read_meta(self.func_id, version, args_id)
        except (OSError, CorruptEntry):
            return False
        if not self.cache_validation_callback(meta):
            self.store_backend.clear_item(self.func_id, version, args_id)
            return False
        return True

    def check_call_in_cache(self, *args, **kwargs):
        """True if this call's result is in the cache and valid (the
        function is not called).

        Returns
        -------
        bool
        """
        version = self._current_version()
        return self._valid_entry(version, self._args_id(args, kwargs))

    def call(self, *args, **kwargs):
        """Force the execution of the function and store its result.

        Returns
        -------
        output : object
            The output of the function call.
        metadata : dict
            The metadata of the call (duration, input_args, time).
        """
        version = self._current_version()
        args_id = self._args_id(args, kwargs)
        value, stored, meta = self._compute(version, args_id, args, kwargs, self.func)
        # (mapped under mmap_mode, as joblib's call and the next hit return it)
        return self._finish(version, args_id, value, stored, False), meta

    def clear(self, warn=True):
        """Empty the function's cache."""
        if self._verbose > 0 and warn:
            _logger.warning("[%s]: Clearing function cache identified by %s"
                            % (self, self.func_id))
        self.store_backend.clear_path(self.func_id)
        self._version = None

    def __getstate__(self):
        # The version travels with the function: a child process may not be
        # able to read its source (functions of __main__, interactive code).
        if self._version is None:
            self._check_version()
        state = self.__dict__.copy()
        state["timestamp"] = None
        state["_code"] = None
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._code = getattr(self.func, "__code__", None)
        self._local = type(self.store_backend).read is LocalStoreBackend.read

    def __repr__(self):
        return "%s(func=%s, location=%s)" % (type(self).__name__, self.func,
                                             self.store_backend.location)


class AsyncMemorizedFunc(MemorizedFunc):
    """MemorizedFunc of an ``async def`` function: calls are awaited."""

    async def __call__(self, *args, **kwargs):
        return await self._async_cached(args, kwargs, shelving=False)

    async def call_and_shelve(self, *args, **kwargs):
        return await self._async_cached(args, kwargs, shelving=True)

    async def call(self, *args, **kwargs):
        version = self._current_version()
        args_id = self._args_id(args, kwargs)
        self._before_call(args, kwargs)
        start = time.time()
        value = await self.func(*args, **kwargs)
        value, stored, meta = self._store(version, args_id, args, kwargs, value, start)
        return self._finish(version, args_id, value, stored, False), meta

    async def _async_cached(self, args, kwargs, shelving):
        version = self._current_version()
        args_id = self._args_id(args, kwargs)
        if shelving:
            if self._valid_entry(version, args_id):
                return self._shelved(version, args_id)
        else:
            hit, value = self._lookup(version, args_id, args, kwargs)
            if hit:
                return value
        lock = self._lock(version, args_id)
        # A blocking flock would stop the event loop, and with it the task
        # that holds the lock: poll instead.
        while not lock.acquire(blocking=False):
            await _asyncio().sleep(0.01)
        stored = False
        try:
            if lock.usable:
                hit, value = self._lookup(version, args_id, args, kwargs)
                if hit:
                    return self._shelved(version, args_id) if shelving else value
            self._before_call(args, kwargs)
            start = time.time()
            value = await self.func(*args, **kwargs)
            value, stored, _ = self._store(version, args_id, args, kwargs, value, start)
        finally:
            lock.release(remove=stored)
        return self._finish(version, args_id, value, stored, shelving)


class Memory:
    """A context object for caching a function's return value each time it
    is called with the same input arguments.

    Results are stored on disk, one crash-safe file per call.  Threads and
    processes that miss the same call at once compute it once; the store
    can bound its size (least recently used entries go first).

    Parameters
    ----------
    location : str, os.PathLike or None
        The directory of the cache.  None caches nothing: cached functions
        are called through.
    backend : str, default='local'
        The store backend (see ``register_store_backend``).
    mmap_mode : {None, 'r+', 'r', 'w+', 'c'}, optional
        How numpy arrays are loaded from the cache (memory-mapped views of
        the entry files, see numpy.load).
    compress : bool, int or (str, int), default=False
        Compress entries: True (zlib 3), a level 1-9 (zlib), or a
        ``(method, level)`` with method zlib, gzip, bz2, lzma or xz.
        Compressed entries cannot be memory-mapped.
    verbose : int, default=1
        0 prints nothing; 1 prints each computation and its duration; more
        prints loads (>4) and where entries are stored (>10).
    bytes_limit : int or str, optional
        The cache's size bound, in bytes or as a string like '1G', '500M'.
        Enforced after each write, least recently used entries first.
    backend_options : dict, optional
        Options for the store backend.
    """

    def __init__(self, location=None, backend="local", mmap_mode=None, compress=False,
                 verbose=1, bytes_limit=None, backend_options=None):
        _check_mmap_mode(mmap_mode)
        if not isinstance(verbose, int):
            raise TypeError("verbose must be an int, got %r" % (verbose,))
        _compress_spec(compress)  # validates
        self._verbose = verbose
        self.mmap_mode = mmap_mode
        self.timestamp = time.time()
        self.backend = backend
        self.compress = compress
        self.bytes_limit = bytes_limit
        bytes_from_limit(bytes_limit)
        if backend_options is not None and not isinstance(backend_options, Mapping):
            # dict() would take a list of pairs, or fail naming no parameter.
            raise TypeError("backend_options must be a dict or None, got %r"
                            % (backend_options,))
        self.backend_options = dict(backend_options or {})
        if compress and mmap_mode is not None:
            warnings.warn("Compressed results cannot be memmapped", stacklevel=2)
        self.location = location
        options = dict(compress=compress, bytes_limit=bytes_limit, **self.backend_options)
        self.store_backend = make_store(backend, location, verbose, options)

    def cache(self, func=None, ignore=None, verbose=None, mmap_mode=False,
              cache_validation_callback=None):
        """Decorate ``func`` to compute its value only for arguments not
        already cached.

        Parameters
        ----------
        func : callable, optional
            The function to decorate (plain, async def, method, partial,
            lambda, closure ...).  Omitted, a decorator is returned.
        ignore : list of str, optional
            Argument names left out of the cache key.
        verbose : int, optional
            The verbosity for this function (default: the Memory's).
        mmap_mode : {None, 'r+', 'r', 'w+', 'c'}, optional
            Default: the Memory's.
        cache_validation_callback : callable, optional
            Called with a hit's metadata (``duration``, ``input_args``,
            ``time``); False makes it recompute.  See ``expires_after``.

        Returns
        -------
        MemorizedFunc
            A callable with ``call``, ``call_and_shelve``,
            ``check_call_in_cache`` and ``clear``.
        """
        if cache_validation_callback is not None and not callable(cache_validation_callback):
            raise ValueError("cache_validation_callback needs to be callable. "
                             f"Got {cache_validation_callback}.")
        # Checked here as Memory() checks its own: else the first call fails
        # comparing it with an int, deep in the cached call.
        if verbose is not None and not isinstance(verbose, numbers.Integral):
            raise TypeError("verbose must be an int or None, got %r" % (verbose,))
        if func is not None and not callable(func):
            # Else accepted, and the first call fails after making its folder.
            raise TypeError("func must be callable, got %r" % (func,))
        if func is None:
            return functools.partial(self.cache, ignore=ignore, mmap_mode=mmap_mode,
                                     verbose=verbose,
                                     cache_validation_callback=cache_validation_callback)
        if self.store_backend is None:
            cls = (AsyncNotMemorizedFunc if inspect.iscoroutinefunction(func)
                   else NotMemorizedFunc)
            return cls(func)
        if verbose is None:
            verbose = self._verbose
        if mmap_mode is False:
            mmap_mode = self.mmap_mode
        if isinstance(func, MemorizedFunc):
            func = func.func
        cls = AsyncMemorizedFunc if inspect.iscoroutinefunction(func) else MemorizedFunc
        return cls(func, location=self.store_backend, backend=self.backend, ignore=ignore,
                   mmap_mode=mmap_mode, compress=self.compress, verbose=verbose,
                   timestamp=self.timestamp,
                   cache_validation_callback=cache_validation_callback)

    def clear(self, warn=True):
        """Erase the complete cache directory."""
        if warn:
            _logger.warning("[%s]: Flushing completely the cache" % (self,))
        if self.store_backend is not None:
            self.store_backend.clear()

    def reduce_size(self, bytes_limit=None, items_limit=None, age_limit=None):
        """Remove cache entries to make the cache fit its limits, least
        recently used first.

        Parameters
        ----------
        bytes_limit : int or str, optional
            Size bound in bytes, or a string like '10G', '500M', '50K'.
            Default: the Memory's ``bytes_limit``.
        items_limit : int, optional
            Number of entries to keep at most.
        age_limit : datetime.timedelta, optional
            Entries not used for longer are removed.

        Without any limit, it still removes the temporary files that
        writers killed mid-write left behind.
        """
        if bytes_limit is None:
            bytes_limit = self.bytes_limit
        _check_reduce_limits(bytes_limit, items_limit, age_limit)
        if self.store_backend is None:
            return
        if bytes_limit is None and items_limit is None and age_limit is None:
            remove_temps = getattr(self.store_backend, "remove_dead_temps", None)
            if remove_temps is not None:
                remove_temps()
            return
        self.store_backend.enforce_store_limits(bytes_limit, items_limit, age_limit)

    def eval(self, func, *args, **kwargs):
        """Evaluate ``func(*args, **kwargs)`` in the context of the memory:
        computed only if not already in the cache."""
        if self.store_backend is None:
            return func(*args, **kwargs)
        return self.cache(func)(*args, **kwargs)

    def __repr__(self):
        return "%s(location=%s)" % (type(self).__name__, None if self.store_backend is None
                                    else self.store_backend.location)

    def __getstate__(self):
        state = self.__dict__.copy()
        state["timestamp"] = None
        return state


def _check_reduce_limits(bytes_limit, items_limit, age_limit):
    """reduce_size's limits, checked before any entry goes: a bad value
    must not delete entries (items_limit=-1 would drop them all) nor fail
    half-way with an internal error."""
    bytes_from_limit(bytes_limit)
    if items_limit is not None:
        if isinstance(items_limit, bool) or not hasattr(items_limit, "__index__"):
            raise TypeError("items_limit must be an int or None, got %r" % (items_limit,))
        if items_limit < 0:
            raise ValueError("items_limit must be >= 0, got %r" % (items_limit,))
    if age_limit is not None and not isinstance(age_limit, datetime.timedelta):
        raise TypeError("age_limit must be a datetime.timedelta or None, got %r"
                        % (age_limit,))
    if age_limit is not None and age_limit.total_seconds() < 0:
        raise ValueError("age_limit has to be a positive timedelta, got %r" % (age_limit,))


def expires_after(days=0, seconds=0, microseconds=0, milliseconds=0, minutes=0, hours=0,
                  weeks=0):
    """A ``cache_validation_callback`` that recomputes results older than
    the given duration.

    Parameters
    ----------
    days, seconds, microseconds, milliseconds, minutes, hours, weeks : numbers
        Passed to ``datetime.timedelta``.

    Returns
    -------
    callable
        ``callback(metadata) -> bool``.
    """
    delta = datetime.timedelta(days=days, seconds=seconds, microseconds=microseconds,
                               milliseconds=milliseconds, minutes=minutes, hours=hours,
                               weeks=weeks)

    def cache_validation_callback(metadata):
        return time.time() - metadata["time"] < delta.total_seconds()

    return cache_validation_callback
