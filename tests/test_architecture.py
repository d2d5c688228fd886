"""The shape of the package: no import cycle, a registry that imports no
backend, `import cyjob` without joblib, Cython directives in one place.

The import graph is read from the sources (``ast`` for .py, the import lines
of .pyx/.pxd), so a cycle is caught even where imports inside functions would
hide it at run time.  An edge is a module-level import (inside ``if``/``try``
and class bodies too, not inside functions): importing ``cyjob.a.b`` also runs
the package ``cyjob.a``, so that is an edge as well (except from modules
inside ``cyjob.a``, and the root package ``cyjob`` aside: it only
re-exports).
"""

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest


# The sources beside the tests, not the imported package: an installed cyjob
# (as .ci/run tests it) ships no .pyx files.
ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "cyjob"
SOURCES = ("*.py", "*.pyx", "*.pxd")


def _module_name(path):
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules():
    """Module name -> the source files that define it (.pyx and .pxd are one)."""
    found = {}
    for pattern in SOURCES:
        for path in PACKAGE.rglob(pattern):
            found.setdefault(_module_name(path), []).append(path)
    return found


def _module_level(nodes):
    """The import statements that run when a module is imported."""
    for node in nodes:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            continue
        else:
            yield from _module_level(ast.iter_child_nodes(node))


_CYTHON_IMPORT = re.compile(
    r"^(?:from[ \t]+(?P<from>[\w.]+)[ \t]+c?import[ \t]+(?P<names>\([^)]*\)|[^\n]*)"
    r"|c?import[ \t]+(?P<modules>[^\n]+))", re.MULTILINE)


def _imported(path, name):
    """(module, names) pairs a source file imports at module level."""
    text = path.read_text()
    if path.suffix == ".py":
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in _module_level(ast.parse(text).body):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    yield alias.name, ()
            else:
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                yield base, tuple(a.name for a in node.names)
        return
    # Cython: the import lines at column 0 (function bodies are indented).
    text = re.sub(r'"""(?:.|\n)*?"""', "", text)
    for match in _CYTHON_IMPORT.finditer(text):
        if match["from"]:
            names = [n.split()[0] for n in match["names"].strip("()").split(",") if n.strip()]
            yield match["from"], tuple(names)
        else:
            for module in match["modules"].split("#")[0].split(","):
                yield module.split()[0], ()


def import_graph():
    modules = _modules()
    graph = {name: set() for name in modules}
    for name, paths in modules.items():
        for path in paths:
            for target, names in _imported(path, name):
                if target != "cyjob" and not target.startswith("cyjob."):
                    continue
                targets = {f"{target}.{n}" for n in names if f"{target}.{n}" in modules}
                if len(targets) < len(names) or not names:
                    targets.add(target)  # a name defined in `target` itself
                for t in list(targets):  # importing a.b.c runs a.b first...
                    parts = t.split(".")
                    targets.update(".".join(parts[:i]) for i in range(2, len(parts))
                                   # ...which, for the importer's own packages,
                                   # has run before it
                                   if not name.startswith(".".join(parts[:i]) + "."))
                targets.discard("cyjob")
                graph[name].update(t for t in targets if t in modules and t != name)
    return graph


def _find_cycle(graph):
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def test_the_graph_is_read_from_every_module():
    graph = import_graph()
    # Spot checks that the reader sees each kind of import.
    assert "cyjob._tasks" in graph["cyjob._dispatch"]          # cimport in .pyx/.pxd
    assert "cyjob._pool" in graph["cyjob._dispatch"]
    assert "cyjob.backends.base" in graph["cyjob.backends"]     # from ... import in .py
    assert "cyjob.backends" in graph["cyjob.parallel"]          # parent package
    assert "cyjob._validation" in graph["cyjob.config"]         # from cyjob import module


def test_no_import_cycle():
    cycle = _find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_a_cycle_would_be_found():
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _find_cycle({"a": {"b"}, "b": set()}) is None


def test_the_backend_registry_imports_no_backend():
    graph = import_graph()
    assert graph["cyjob.backends"] <= {"cyjob.backends.base", "cyjob._cpus"}


def test_the_core_modules_stand_in_layers():
    graph = import_graph()
    assert not graph["cyjob._tasks"] - {"cyjob._sync"}
    assert not graph["cyjob._pool"] - {"cyjob._sync", "cyjob.exceptions"}
    assert "cyjob._dispatch" not in graph["cyjob._pool"]


def test_import_cyjob_imports_neither_joblib_nor_optional_backends():
    code = ("import sys, cyjob; "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('joblib', 'distributed', 'dask')"
            " or m.startswith(('cyjob.backends.dask', 'cyjob.backends.processes'))]; "
            "print(bad); sys.exit(1 if bad else 0)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, cwd=ROOT)
    assert out.returncode == 0, out.stdout + out.stderr


def test_cython_directives_live_only_in_setup_py():
    # A `# cython:` header in a .pyx overrides setup.py's directives: a debug
    # build (CYJOB_DEBUG=1) would then check no bounds in that module.
    for path in PACKAGE.rglob("*.pyx"):
        for line in path.read_text().splitlines()[:5]:
            assert not re.match(r"#\s*cython\s*:", line), f"{path.name}: {line}"


def test_backends_receive_the_plan():
    from cyjob import Parallel, delayed, register_parallel_backend
    from cyjob._plan import Plan
    from cyjob.backends.sequential import SequentialBackend

    received = []

    class Recording(SequentialBackend):
        name = "test-plan-recording"

        def effective_n_jobs(self, n_jobs):
            return 2

        def executor(self, n_workers, plan=None):
            received.append((n_workers, plan))
            return super().executor(n_workers, plan)

    register_parallel_backend("test-plan-recording", Recording)
    parallel = Parallel(n_jobs=2, backend="test-plan-recording", max_nbytes="2M",
                        return_as="generator", batch_size=3)
    assert list(parallel(delayed(abs)(-i) for i in range(5))) == [0, 1, 2, 3, 4]
    (n_workers, plan), = received
    assert type(plan) is Plan and n_workers == plan.n_workers == 2
    assert (plan.max_nbytes, plan.return_as, plan.fixed_batch_size) == (2 * 1024 ** 2, "generator", 3)
    assert plan.label == repr(parallel)
    with pytest.raises(AttributeError):
        plan.n_jobs = 3  # immutable
    assert plan is parallel._plan
