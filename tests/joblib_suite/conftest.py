"""Run joblib's own test modules (listed in suites.py) against cyjob.

For each suite this plugin imports the module from the *installed* joblib
(``joblib.test.<name>``) with the listed public names bound to cyjob's
(joblib's own modules hand out cyjob's objects for those names while the test
module is imported, so module-level code such as test parameters gets them
too), and collects its tests under ``tests/joblib_suite/suites.py::<name>``.

* ``excluded/<name>.txt``: tests of joblib's private internals (``_backend``
  attributes, loky's classes, exact internal log lines...), skipped with their
  reason.  A line is ``pattern  # reason``; the pattern is a test name (all
  its parametrisations) or a name with its parameters in brackets, where ``*``
  matches anything (nothing else is special).  A pattern that matches no test
  is an error: the list stays honest when joblib changes.
* ``known_failures/<name>.txt`` (optional): the same format, for behaviours
  cyjob still gets wrong: they run as ``xfail(strict=True)``, so fixing one
  fails the run until its line is removed.  Never for a test of cyjob's own
  behaviour that is merely inconvenient: fix it or say why in excluded/.

Scripts the module runs in a subprocess (module-level strings with a
``from joblib import ...`` line) get the same names from cyjob.  Functions of
the module are pickled by value (cloudpickle) rather than by
reference: a worker process then runs them with the rebound names, as the
parent does, instead of re-importing joblib's originals.
"""

import asyncio
import contextlib
import importlib
import inspect
import re
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent
SUITES_FILE = HERE / "suites.py"


def _load_suites():
    namespace = {}
    exec(compile(SUITES_FILE.read_text(), str(SUITES_FILE), "exec"), namespace)
    return namespace["SUITES"]


def _resolve(spec):
    """``"Name"`` -> (Name, cyjob.Name); ``"Name=pkg.mod:attr"`` -> (Name, attr of pkg.mod)."""
    name, _, target = spec.partition("=")
    module_name, _, attr = (target or "cyjob:" + name).partition(":")
    return name.strip(), getattr(importlib.import_module(module_name.strip()), attr.strip())


def _read_patterns(path):
    """[(pattern text, compiled regex, reason)] from an exclusion-style file."""
    entries = []
    if not path.exists():
        return entries
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        pattern, sep, reason = line.partition("#")
        pattern, reason = pattern.strip(), reason.strip()
        if not sep or not reason:
            raise pytest.UsageError(f"{path}:{lineno}: every entry needs '# reason'")
        regex = ".*".join(map(re.escape, pattern.split("*")))
        if "[" not in pattern:
            regex += r"(\[.*\])?"  # a bare test name: every parametrisation of it
        regex = re.compile(regex)
        entries.append((pattern, regex, reason))
    return entries


def _matching(entries, item_name):
    for entry in entries:
        if entry[1].fullmatch(item_name):
            return entry
    return None


_FROM_JOBLIB = re.compile(r"^(?P<indent>[ \t]*)from joblib import (?P<names>[\w ,]+)$", re.M)


def _rebind_script(text, rebound):
    """Rewrite ``from joblib import A, B`` lines of a script the module runs
    in a subprocess so that the rebound names come from cyjob there too."""

    def swap(match):
        names = [n.strip() for n in match["names"].split(",") if n.strip()]
        ours = [n for n in names if n in rebound]
        if not ours:
            return match[0]
        indent, theirs = match["indent"], [n for n in names if n not in rebound]
        lines = [f"{indent}from cyjob import {', '.join(ours)}"]
        if theirs:
            lines.insert(0, f"{indent}from joblib import {', '.join(theirs)}")
        return "\n".join(lines)

    return _FROM_JOBLIB.sub(swap, text)


@contextlib.contextmanager
def _joblib_names_swapped(rebound):
    """While the test module is imported, joblib's own modules hand out
    cyjob's objects for the rebound names, so that module-level code (test
    parameters such as ``[parallel_config, parallel_backend]``, a backend
    registered at import) gets cyjob's too.  joblib is restored after."""
    import joblib

    originals = {name: getattr(joblib, name) for name in rebound if hasattr(joblib, name)}
    patched = []
    for module_name, module in list(sys.modules.items()):
        if module is None or not (module_name == "joblib" or module_name.startswith("joblib.")):
            continue
        if module_name.startswith("joblib.test."):
            continue
        for name, original in originals.items():
            if vars(module).get(name) is original:
                patched.append((module, name, original))
                setattr(module, name, rebound[name])
    try:
        yield
    finally:
        for module, name, original in patched:
            setattr(module, name, original)


def _import_rebound(module_name, specs):
    """Import ``module_name`` with the names of ``specs`` bound to cyjob's."""
    rebound = dict(_resolve(spec) for spec in specs)
    importlib.import_module(module_name.rpartition(".")[0])
    with _joblib_names_swapped(rebound):
        module = importlib.import_module(module_name)
    _rebind(module, rebound)
    return module


def _rebind(module, rebound):
    for name, value in rebound.items():
        if name not in vars(module):
            raise pytest.UsageError(f"{module.__name__} has no name {name!r} to rebind")
        setattr(module, name, value)
    # Scripts the tests run in a subprocess (module-level strings).
    for name, value in list(vars(module).items()):
        if isinstance(value, str) and "from joblib import" in value:
            setattr(module, name, _rebind_script(value, rebound))
    # A worker process unpickling a function by reference would import the
    # module afresh, with joblib's names: send its functions by value.
    import cloudpickle

    cloudpickle.register_pickle_by_value(module)
    try:
        from joblib.externals import cloudpickle as joblib_cloudpickle
    except ImportError:
        pass
    else:
        joblib_cloudpickle.register_pickle_by_value(module)


class JoblibTestModule(pytest.Module):
    """A test module of the installed joblib, with cyjob's names bound in it."""

    def __init__(self, *args, specs=(), **kwargs):
        super().__init__(*args, **kwargs)
        self.specs = specs

    def _getobj(self):
        module_name = f"joblib.test.{self.name}"
        if module_name in sys.modules:
            raise pytest.UsageError(f"{module_name} was imported before the harness could "
                                    "bind cyjob's names into it")
        return _import_rebound(module_name, self.specs)


class JoblibSuites(pytest.File):
    """suites.py: one child per joblib test module it lists."""

    def collect(self):
        import joblib.test

        package_dir = Path(joblib.test.__file__).parent
        for name, specs in _load_suites().items():
            if not (HERE / "excluded" / f"{name}.txt").exists():
                raise pytest.UsageError(f"tests/joblib_suite/excluded/{name}.txt is missing "
                                        f"(say which tests of joblib.test.{name} are excluded, "
                                        "even if none)")
            yield JoblibTestModule.from_parent(
                self, path=package_dir / f"{name}.py", name=name,
                nodeid=f"{self.nodeid}::{name}", specs=specs)


def pytest_collect_file(file_path, parent):
    if file_path == SUITES_FILE:
        return JoblibSuites.from_parent(parent, path=file_path)
    return None


@pytest.hookimpl(tryfirst=True)  # before -k/--deselect remove items
def pytest_collection_modifyitems(session, config, items):
    """Skip the excluded tests and mark the known failures as strict xfails."""
    lists = {}  # module name -> (excluded, known, used patterns)
    for item in items:
        module = item.getparent(JoblibTestModule)
        if module is None:
            continue
        if module.name not in lists:
            lists[module.name] = (_read_patterns(HERE / "excluded" / f"{module.name}.txt"),
                                  _read_patterns(HERE / "known_failures" / f"{module.name}.txt"),
                                  set())
        excluded, known, used = lists[module.name]
        entry = _matching(excluded, item.name)
        if entry is not None:
            used.add(("excluded", entry[0]))
            item.add_marker(pytest.mark.skip(reason=f"excluded (joblib internals): {entry[2]}"))
            continue
        entry = _matching(known, item.name)
        if entry is not None:
            used.add(("known_failures", entry[0]))
            item.add_marker(pytest.mark.xfail(strict=True, reason=f"known cyjob failure: {entry[2]}"))
    if any("::" in str(arg) for arg in config.args):
        return  # a selection: patterns for the tests left out are not stale
    for name, (excluded, known, used) in lists.items():
        for kind, entries in (("excluded", excluded), ("known_failures", known)):
            for pattern, _, _ in entries:
                if (kind, pattern) not in used:
                    raise pytest.UsageError(
                        f"tests/joblib_suite/{kind}/{name}.txt: {pattern!r} matches no test "
                        f"of joblib.test.{name}")


def pytest_configure(config):
    # Markers joblib's own conftest (not installed with joblib) declares.
    for marker in ("thread_unsafe: not safe to run in parallel threads",
                   "no_cover: not run under coverage",
                   "asyncio: an async test (run here with asyncio.run)"):
        config.addinivalue_line("markers", marker)
    if not config.pluginmanager.has_plugin("cyjob-joblib-suite-async"):
        config.pluginmanager.register(_AsyncTests(), "cyjob-joblib-suite-async")


class _AsyncTests:
    """Runs ``async def`` tests of joblib's modules (joblib uses pytest-asyncio's
    marker; a fresh event loop per test is all they need).

    A plugin, not a hook of this conftest: pytest applies a conftest's hooks
    only to items under its folder, and joblib's test modules live in
    site-packages (as a conftest hook it never ran: every async test failed
    with "async def functions are not natively supported")."""

    @pytest.hookimpl(tryfirst=True)
    def pytest_pyfunc_call(self, pyfuncitem):
        if pyfuncitem.getparent(JoblibTestModule) is None or not inspect.iscoroutinefunction(
                pyfuncitem.obj):
            return None
        names = pyfuncitem._fixtureinfo.argnames
        kwargs = {name: pyfuncitem.funcargs[name] for name in names}
        asyncio.run(pyfuncitem.obj(**kwargs))
        return True
