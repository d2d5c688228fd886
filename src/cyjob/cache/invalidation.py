"""What a cached function's entries depend on besides its arguments.

A function's *version* is a digest of

- its code: the source text when ``inspect`` finds it, else the code
  object's bytecode, constants and names (lambdas typed at a prompt,
  functions whose file is gone);
- its default and keyword-only default values;
- the code of the module-level functions it calls directly that live in
  its own package (top-level package name equal, or both in ``__main__``):
  a global name read by the function (or by a function/lambda/comprehension
  nested in it) that resolves, in the function's globals, to a plain Python
  function of that package.

How deep: one level.  A helper's own helpers, methods reached through an
object (``self.helper()``, ``module.helper()`` attribute access), classes,
functions of other packages, global *values* (constants, configuration)
and anything chosen at run time are not followed: changing them does not
invalidate.  Installed third-party code is deliberately out: a library
upgrade would otherwise wipe every cache.
"""

import inspect
import re
import sys
import types

import xxhash

__all__ = ["FunctionVersion", "function_version", "describe_change"]


def _code_text(func):
    code = getattr(func, "__code__", None)
    try:
        return inspect.getsource(func)
    except (OSError, TypeError):
        pass
    if code is None:
        return _safe_repr(func)
    return _code_fingerprint(code)


def _code_fingerprint(code):
    parts = [code.co_code.hex(), repr(code.co_names), repr(code.co_varnames)]
    for const in code.co_consts:
        parts.append(_code_fingerprint(const) if isinstance(const, types.CodeType)
                     else repr(const))
    return "\n".join(parts)


def _global_names(code, out):
    out.update(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            _global_names(const, out)
    return out


def _package(module_name):
    return (module_name or "").partition(".")[0]


def _unwrap(func):
    while True:
        if isinstance(func, types.MethodType):
            func = func.__func__
        elif hasattr(func, "__wrapped__") and not isinstance(func, type):
            func = func.__wrapped__
        else:
            return func


def helpers_of(func):
    """{name: function} of the same-package module-level functions that
    ``func`` calls directly (reads as a global)."""
    func = _unwrap(func)
    code = getattr(func, "__code__", None)
    glob = getattr(func, "__globals__", None)
    if code is None or glob is None:
        return {}
    package = _package(getattr(func, "__module__", None))
    found = {}
    for name in sorted(_global_names(code, set())):
        target = glob.get(name)
        if isinstance(target, types.FunctionType) and target is not func:
            if _package(target.__module__) == package:
                found[name] = target
        elif target is not None and hasattr(target, "func") and hasattr(target, "ignore"):
            # Another cached function (a MemorizedFunc): its own function.
            inner = getattr(target, "func")
            if isinstance(inner, types.FunctionType) and _package(inner.__module__) == package:
                found[name] = inner
    return found


# What object.__repr__ and the reprs of functions and builtin methods add:
# the address changes in every process, the version must not.
_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


def _safe_repr(value):
    try:
        return _ADDRESS.sub("", repr(value))
    except Exception:
        return "<%s>" % type(value).__qualname__


class FunctionVersion:
    """A function's version digest and what it was made of (for messages)."""

    __slots__ = ("digest", "code", "defaults", "helpers")

    def __init__(self, code, defaults, helpers):
        self.code = code
        self.defaults = defaults
        self.helpers = helpers
        state = xxhash.xxh3_64(code.encode("utf-8", "surrogatepass"))
        state.update(b"\0defaults\0" + defaults.encode("utf-8", "surrogatepass"))
        for name in sorted(helpers):
            state.update(("\0%s\0%s" % (name, helpers[name])).encode("utf-8", "surrogatepass"))
        self.digest = state.hexdigest()

    def as_json(self):
        return {"version": self.digest, "code": self.code, "defaults": self.defaults,
                "helpers": {k: xxhash.xxh3_64_hexdigest(v.encode("utf-8", "surrogatepass"))
                            for k, v in self.helpers.items()}}


def function_version(func):
    """The FunctionVersion of ``func`` as it is now."""
    import functools

    extra = ""
    if isinstance(func, functools.partial):
        # The partial's frozen arguments are part of the call key; its
        # function decides the version.
        func = func.func
    base = _unwrap(func)
    if not isinstance(base, types.FunctionType) and callable(base) and not isinstance(
            base, types.BuiltinFunctionType):
        call = getattr(type(base), "__call__", None)
        if isinstance(call, types.FunctionType):  # a callable object
            extra = "callable %s\n" % type(base).__qualname__
            base = call
    code = extra + _code_text(base)
    defaults = "%s | %s" % (_safe_repr(getattr(base, "__defaults__", None)),
                            _safe_repr(getattr(base, "__kwdefaults__", None)))
    helpers = {name: _code_text(h) for name, h in helpers_of(base).items()}
    return FunctionVersion(code, defaults, helpers)


def describe_change(old, new):
    """Why ``new`` (a FunctionVersion) differs from ``old`` (its as_json())."""
    if not old:
        return "no previous version recorded"
    reasons = []
    if old.get("code") != new.code:
        reasons.append("its code changed")
    if old.get("defaults") != new.defaults:
        reasons.append("its default arguments changed (%s -> %s)"
                       % (old.get("defaults"), new.defaults))
    old_helpers = old.get("helpers") or {}
    new_helpers = new.as_json()["helpers"]
    for name in sorted(set(old_helpers) | set(new_helpers)):
        if name not in new_helpers:
            reasons.append("it no longer calls %s()" % name)
        elif name not in old_helpers:
            reasons.append("it now calls %s()" % name)
        elif old_helpers[name] != new_helpers[name]:
            reasons.append("the function %s() it calls changed" % name)
    return ", ".join(reasons) or "its version changed"


def module_is_main(func):
    return getattr(_unwrap(func), "__module__", None) == "__main__" or sys.modules.get(
        getattr(func, "__module__", None)) is sys.modules.get("__main__")
