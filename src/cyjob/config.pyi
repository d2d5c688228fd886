"""Type stubs for cyjob.config: parallel_config and friends."""

import os
from types import TracebackType
from typing import Any, Literal

from typing_extensions import Self, TypeAlias

from cyjob.backends.base import Backend

__all__ = ["parallel_config", "parallel_backend", "cpu_count", "effective_n_jobs"]

_BackendArg: TypeAlias = str | Backend
_MmapMode: TypeAlias = Literal["r+", "r", "w+", "c"]

class _Default:
    value: Any
    def __init__(self, value: Any) -> None: ...

def default(value: Any) -> _Default: ...
def is_default(value: object) -> bool: ...

DEFAULTS: dict[str, Any]

def get_config() -> dict[str, Any]: ...

class parallel_config:
    """Set the defaults of ``Parallel`` in a ``with`` block."""

    old_config: dict[str, Any]
    config: dict[str, Any]
    def __init__(
        self,
        backend: _BackendArg | None = ...,
        *,
        n_jobs: int | None = ...,
        verbose: float = ...,
        temp_folder: str | os.PathLike[str] | None = ...,
        max_nbytes: int | str | None = ...,
        mmap_mode: _MmapMode | None = ...,
        prefer: Literal["threads", "processes"] | None = ...,
        require: Literal["sharedmem"] | None = ...,
        inner_max_num_threads: int | None = None,
        **backend_params: Any,
    ) -> None: ...
    def __enter__(self) -> Self: ...
    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None: ...
    def unregister(self) -> None: ...

class parallel_backend(parallel_config):
    """The older spelling of ``parallel_config(backend, n_jobs=-1, ...)``."""

    def __init__(
        self,
        backend: _BackendArg,
        n_jobs: int | None = -1,
        inner_max_num_threads: int | None = None,
        **backend_params: Any,
    ) -> None: ...

def _cgroup_cpu_limit() -> int | None: ...
def cpu_count(only_physical_cores: bool = False) -> int: ...
def effective_n_jobs(n_jobs: int | None = -1) -> int: ...
