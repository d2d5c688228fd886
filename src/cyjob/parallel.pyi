"""Type stubs for cyjob.parallel.

``Parallel`` is generic in its ``return_as`` so that type checkers know what a
call returns: ``Parallel()(tasks)`` is a ``list``,
``Parallel(return_as="generator")(tasks)`` a ``Generator``.
"""

import os
from collections.abc import Generator, Iterable, Sequence
from types import TracebackType
from typing import Any, Generic, Literal, TypeVar, overload

from typing_extensions import Self, TypeAlias

from cyjob._tasks import _Task
from cyjob.backends.base import Backend

__all__ = ["Parallel"]

_T = TypeVar("_T")
# The ``return_as`` a Parallel was made with, as a Literal type.
_R_co = TypeVar("_R_co", covariant=True)

_BackendArg: TypeAlias = str | Backend
_Lazy: TypeAlias = Literal["generator", "generator_unordered"]
_MmapMode: TypeAlias = Literal["r+", "r", "w+", "c"]

class Parallel(Generic[_R_co]):
    """Run ``delayed`` tasks in parallel; a drop-in for ``joblib.Parallel``."""

    @property
    def n_jobs(self) -> int: ...
    @property
    def verbose(self) -> float: ...
    @property
    def return_as(self) -> str: ...
    @property
    def timeout(self) -> float | None: ...
    @property
    def pre_dispatch(self) -> int | str: ...
    @property
    def batch_size(self) -> int | str: ...
    @property
    def prefer(self) -> str | None: ...
    @property
    def require(self) -> str | None: ...
    @property
    def temp_folder(self) -> str | os.PathLike[str] | None: ...
    @property
    def max_nbytes(self) -> int | None: ...
    @property
    def mmap_mode(self) -> str | None: ...
    @property
    def progress(self) -> bool: ...

    @overload
    def __init__(
        self: Parallel[Literal["list"]],
        n_jobs: int | None = ...,
        backend: _BackendArg | None = ...,
        return_as: Literal["list"] = "list",
        verbose: float = ...,
        timeout: float | None = None,
        pre_dispatch: int | str = "2 * n_jobs",
        batch_size: int | Literal["auto"] = "auto",
        temp_folder: str | os.PathLike[str] | None = ...,
        max_nbytes: int | str | None = ...,
        mmap_mode: _MmapMode | None = ...,
        prefer: Literal["threads", "processes"] | None = ...,
        require: Literal["sharedmem"] | None = ...,
        max_batch_size: int | None = None,
        progress: bool = False,
        **backend_kwargs: Any,
    ) -> None: ...
    @overload
    def __init__(
        self: Parallel[_Lazy],
        n_jobs: int | None = ...,
        backend: _BackendArg | None = ...,
        *,
        return_as: _Lazy,
        verbose: float = ...,
        timeout: float | None = None,
        pre_dispatch: int | str = "2 * n_jobs",
        batch_size: int | Literal["auto"] = "auto",
        temp_folder: str | os.PathLike[str] | None = ...,
        max_nbytes: int | str | None = ...,
        mmap_mode: _MmapMode | None = ...,
        prefer: Literal["threads", "processes"] | None = ...,
        require: Literal["sharedmem"] | None = ...,
        max_batch_size: int | None = None,
        progress: bool = False,
        **backend_kwargs: Any,
    ) -> None: ...
    @overload
    def __init__(
        self: Parallel[_Lazy],
        n_jobs: int | None,
        backend: _BackendArg | None,
        return_as: _Lazy,
        verbose: float = ...,
        timeout: float | None = None,
        pre_dispatch: int | str = "2 * n_jobs",
        batch_size: int | Literal["auto"] = "auto",
        temp_folder: str | os.PathLike[str] | None = ...,
        max_nbytes: int | str | None = ...,
        mmap_mode: _MmapMode | None = ...,
        prefer: Literal["threads", "processes"] | None = ...,
        require: Literal["sharedmem"] | None = ...,
        max_batch_size: int | None = None,
        progress: bool = False,
        **backend_kwargs: Any,
    ) -> None: ...
    @overload
    def __init__(
        self: Parallel[str],
        n_jobs: int | None = ...,
        backend: _BackendArg | None = ...,
        return_as: str = "list",
        verbose: float = ...,
        timeout: float | None = None,
        pre_dispatch: int | str = "2 * n_jobs",
        batch_size: int | str = "auto",
        temp_folder: str | os.PathLike[str] | None = ...,
        max_nbytes: int | str | None = ...,
        mmap_mode: str | None = ...,
        prefer: str | None = ...,
        require: str | None = ...,
        max_batch_size: int | None = None,
        progress: bool = False,
        **backend_kwargs: Any,
    ) -> None: ...
    @overload
    def __call__(self: Parallel[Literal["list"]], iterable: Iterable[_Task[_T]]) -> list[_T]: ...
    @overload
    def __call__(
        self: Parallel[Literal["list"]], iterable: Iterable[Sequence[Any]]
    ) -> list[Any]: ...
    @overload
    def __call__(
        self: Parallel[_Lazy], iterable: Iterable[_Task[_T]]
    ) -> Generator[_T, None, None]: ...
    @overload
    def __call__(
        self: Parallel[_Lazy], iterable: Iterable[Sequence[Any]]
    ) -> Generator[Any, None, None]: ...
    @overload
    def __call__(
        self: Parallel[str], iterable: Iterable[Sequence[Any]]
    ) -> list[Any] | Generator[Any, None, None]: ...
    def __enter__(self) -> Self: ...
    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None: ...
