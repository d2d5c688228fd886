"""Type stubs for the compiled module cyjob._tasks (see _tasks.pyx)."""

from typing import Any, Callable, Generic, Iterable, TypeVar

from typing_extensions import ParamSpec, TypeAlias

_P = ParamSpec("_P")
_T = TypeVar("_T")

#: What ``delayed(f)(*args, **kwargs)`` returns: ``(f, args, kwargs)``.
# (Arguments typed `object`, not `Any`: an argument holding Any would make
# Parallel.__call__'s overloads ambiguous, and type checkers would give up.)
_Task: TypeAlias = tuple[Callable[..., _T], tuple[object, ...], dict[str, object]]

class DelayedFunction(Generic[_P, _T]):
    """``delayed(f)``: calling it returns the task ``(f, args, kwargs)``."""

    @property
    def func(self) -> Callable[_P, _T]: ...
    def __init__(self, func: Callable[_P, _T]) -> None: ...
    def __call__(
        self, *args: _P.args, **kwargs: _P.kwargs
    ) -> tuple[Callable[_P, _T], tuple[object, ...], dict[str, object]]: ...
    @property
    def __wrapped__(self) -> Callable[_P, _T]: ...
    @property
    def __name__(self) -> str: ...
    @property
    def __qualname__(self) -> str: ...
    def __reduce__(self) -> tuple[Any, ...]: ...

def delayed(function: Callable[_P, _T]) -> DelayedFunction[_P, _T]: ...
def check_tasks(tasks: Iterable[Any]) -> None: ...
def run_tasks(flat: list[Any]) -> tuple[list[Any] | None, BaseException | None, float]: ...
