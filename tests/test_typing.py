"""The typed API: mypy runs clean on the package, the stubs match the
compiled modules, and type checkers see what Parallel returns."""

import ast
import inspect
import os
import site
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("mypy")

import cyjob  # noqa: E402
from cyjob.config import parallel_config  # noqa: E402
from cyjob.parallel import Parallel  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src"
PACKAGE = Path(cyjob.__file__).resolve().parent


def run_mypy(*args, cwd=ROOT):
    env = dict(os.environ, MYPYPATH=str(SRC))
    return subprocess.run(
        [sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml"), *args],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=280)


@pytest.mark.timeout(300)
def test_mypy_runs_clean_on_the_package():
    out = run_mypy(str(SRC / "cyjob"))
    assert out.returncode == 0, out.stdout + out.stderr


def _installed(path):
    """True if ``path`` is a site-packages directory (mypy finds installed
    packages there by itself, and refuses them in MYPYPATH)."""
    site_dirs = {Path(p).resolve() for p in site.getsitepackages() + [site.getusersitepackages()]}
    return path.resolve() in site_dirs


@pytest.mark.timeout(300)
def test_stubs_match_the_compiled_modules():
    # The runtime is the cyjob this test imported (built in place under src/,
    # or installed); the stubs are read from beside it.
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(PACKAGE.parent)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    if _installed(PACKAGE.parent):
        env.pop("MYPYPATH", None)
    else:
        env["MYPYPATH"] = str(PACKAGE.parent)
    out = subprocess.run(
        [sys.executable, "-m", "mypy.stubtest", "--mypy-config-file", str(ROOT / "pyproject.toml"),
         "--allowlist", str(ROOT / "tests" / "stubtest_allowlist.txt"),
         "--ignore-unused-allowlist",  # older mypy versions report fewer things
         "cyjob._tasks", "cyjob._pool", "cyjob._dispatch", "cyjob._batching",
         "cyjob.parallel", "cyjob.config", "cyjob.persist", "cyjob.cache._canon",
         "cyjob.cache.hashing", "cyjob.cache.memory"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=280)
    assert out.returncode == 0, out.stdout + out.stderr


USAGE = '''
from typing import Any, Generator, List

from typing_extensions import assert_type

from cyjob import Parallel, delayed, parallel_config


def square(x: int) -> int:
    return x * x


def greet(name: str, punctuation: str = "!") -> str:
    return "hello " + name + punctuation


func, args, kwargs = delayed(greet)("you", punctuation="?")
assert_type(func("me"), str)
assert_type(args, tuple[object, ...])
assert_type(kwargs, dict[str, object])

assert_type(Parallel(n_jobs=2)(delayed(square)(i) for i in range(3)), List[int])
assert_type(Parallel(2, "threading")([delayed(square)(i) for i in range(3)]), List[int])
assert_type(Parallel(n_jobs=2, return_as="generator")(delayed(square)(i) for i in range(3)),
            Generator[int, None, None])
assert_type(Parallel(return_as="generator_unordered")(delayed(greet)(n) for n in "ab"),
            Generator[str, None, None])
assert_type(Parallel(2, None, "generator")(delayed(square)(i) for i in range(3)),
            Generator[int, None, None])
assert_type(Parallel()([[square, [2], {}]]), List[Any])
with Parallel(n_jobs=2) as parallel:
    assert_type(parallel(delayed(square)(i) for i in range(3)), List[int])

mode: str = "list"
dynamic = Parallel(return_as=mode)(delayed(square)(i) for i in range(3))
assert_type(dynamic, List[Any] | Generator[Any, None, None])

with parallel_config(backend="threading", n_jobs=2, max_nbytes="1M"):
    pass

# What a type checker must reject (warn_unused_ignores: each must be an error).
delayed(square)("three")  # type: ignore[arg-type]
Parallel(n_jobs="2")  # type: ignore[call-overload]
parallel_config(n_jobs="all")  # type: ignore[arg-type]
parallel_config(prefer="gpu")  # type: ignore[arg-type]
'''


@pytest.mark.timeout(300)
def test_type_checkers_see_what_parallel_returns(tmp_path):
    path = tmp_path / "usage.py"
    path.write_text(USAGE)
    out = run_mypy("--warn-unused-ignores", "--python-version", "3.10", str(path))
    assert out.returncode == 0, out.stdout + out.stderr


def _stub_parameters(stub, cls, method="__init__"):
    """Parameter names of every definition of ``cls.method`` in a stub file."""
    tree = ast.parse((PACKAGE / stub).read_text())
    found = []
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == cls:
            for item in node.body:
                if isinstance(item, ast.FunctionDef) and item.name == method:
                    a = item.args
                    names = [p.arg for p in a.posonlyargs + a.args + a.kwonlyargs][1:]
                    if a.kwarg:
                        names.append("**" + a.kwarg.arg)
                    found.append(names)
    return found


def _runtime_parameters(func):
    names = []
    for p in list(inspect.signature(func).parameters.values())[1:]:
        names.append("**" + p.name if p.kind is p.VAR_KEYWORD else p.name)
    return names


@pytest.mark.parametrize("stub, cls, runtime", [
    ("parallel.pyi", "Parallel", Parallel.__init__),
    ("config.pyi", "parallel_config", parallel_config.__init__),
])
def test_stub_signatures_name_every_runtime_parameter(stub, cls, runtime):
    # stubtest cannot check these (their defaults are sentinels): a parameter
    # added to the runtime must be added to every overload of the stub.
    overloads = _stub_parameters(stub, cls)
    assert overloads
    for names in overloads:
        assert names == _runtime_parameters(runtime), textwrap.dedent(f"""
            {stub}: {cls}.__init__ does not match the runtime signature""")
