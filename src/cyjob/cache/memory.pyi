import datetime
import os
from typing import Any, Awaitable, Callable, Generic, Literal, TypeVar, overload

from typing_extensions import ParamSpec

from cyjob.cache.store import StoreBackendBase

__all__ = ["Memory", "MemorizedFunc", "AsyncMemorizedFunc", "MemorizedResult",
           "NotMemorizedFunc", "AsyncNotMemorizedFunc", "NotMemorizedResult",
           "expires_after"]

_P = ParamSpec("_P")
_R = TypeVar("_R")
_MmapMode = Literal["r+", "r", "w+", "c"] | None
_Compress = bool | int | str | tuple[str, int]

class NotMemorizedResult(Generic[_R]):
    value: _R | None
    valid: bool
    def __init__(self, value: _R) -> None: ...
    def get(self) -> _R: ...
    def clear(self) -> None: ...

class MemorizedResult(Generic[_R]):
    store_backend: StoreBackendBase
    func_id: str
    version: str
    args_id: str
    mmap_mode: _MmapMode
    verbose: int
    def __init__(self, store_backend: StoreBackendBase, func_id: str, version: str,
                 args_id: str, mmap_mode: _MmapMode = ..., verbose: int = ...,
                 metadata: dict[str, Any] | None = ...) -> None: ...
    @property
    def func(self) -> str: ...
    @property
    def metadata(self) -> dict[str, Any]: ...
    @property
    def duration(self) -> float | None: ...
    def get(self) -> _R: ...
    def clear(self) -> None: ...

class NotMemorizedFunc(Generic[_P, _R]):
    func: Callable[_P, _R]
    def __init__(self, func: Callable[_P, _R]) -> None: ...
    def __call__(self, *args: _P.args, **kwargs: _P.kwargs) -> _R: ...
    def call_and_shelve(self, *args: _P.args, **kwargs: _P.kwargs) -> NotMemorizedResult[_R]: ...
    def clear(self, warn: bool = ...) -> None: ...
    def call(self, *args: _P.args, **kwargs: _P.kwargs) -> tuple[_R, dict[str, Any]]: ...
    def check_call_in_cache(self, *args: _P.args, **kwargs: _P.kwargs) -> bool: ...

class AsyncNotMemorizedFunc(NotMemorizedFunc[_P, _R]):
    async def call_and_shelve(  # type: ignore[override]
        self, *args: _P.args, **kwargs: _P.kwargs) -> NotMemorizedResult[Any]: ...

class MemorizedFunc(Generic[_P, _R]):
    func: Callable[_P, _R]
    func_id: str
    ignore: list[str]
    mmap_mode: _MmapMode
    compress: _Compress
    cache_validation_callback: Callable[[dict[str, Any]], bool] | None
    timestamp: float | None
    store_backend: StoreBackendBase
    def __init__(self, func: Callable[_P, _R], location: Any, backend: str = ...,
                 ignore: list[str] | None = ..., mmap_mode: _MmapMode = ...,
                 compress: _Compress = ..., verbose: int = ..., timestamp: float | None = ...,
                 cache_validation_callback: Callable[[dict[str, Any]], bool] | None = ...,
                 ) -> None: ...
    def __call__(self, *args: _P.args, **kwargs: _P.kwargs) -> _R: ...
    def call_and_shelve(self, *args: _P.args,
                        **kwargs: _P.kwargs) -> MemorizedResult[_R] | NotMemorizedResult[_R]: ...
    def check_call_in_cache(self, *args: _P.args, **kwargs: _P.kwargs) -> bool: ...
    def call(self, *args: _P.args, **kwargs: _P.kwargs) -> tuple[_R, dict[str, Any]]: ...
    def clear(self, warn: bool = ...) -> None: ...
    def __getstate__(self) -> dict[str, Any]: ...
    def __setstate__(self, state: dict[str, Any]) -> None: ...

class AsyncMemorizedFunc(MemorizedFunc[_P, _R]):
    async def __call__(self, *args: _P.args, **kwargs: _P.kwargs) -> Any: ...  # type: ignore[override]
    async def call_and_shelve(  # type: ignore[override]
        self, *args: _P.args, **kwargs: _P.kwargs) -> Any: ...
    async def call(  # type: ignore[override]
        self, *args: _P.args, **kwargs: _P.kwargs) -> tuple[Any, dict[str, Any]]: ...

class Memory:
    location: str | os.PathLike[str] | StoreBackendBase | None
    mmap_mode: _MmapMode
    compress: _Compress
    backend: str
    bytes_limit: int | str | None
    backend_options: dict[str, Any]
    timestamp: float | None
    store_backend: StoreBackendBase | None
    def __init__(self, location: str | os.PathLike[str] | StoreBackendBase | None = ...,
                 backend: str = ..., mmap_mode: _MmapMode = ..., compress: _Compress = ...,
                 verbose: int = ..., bytes_limit: int | str | None = ...,
                 backend_options: dict[str, Any] | None = ...) -> None: ...
    @overload
    def cache(self, func: Callable[_P, _R], ignore: list[str] | None = ...,
              verbose: int | None = ..., mmap_mode: _MmapMode | Literal[False] = ...,
              cache_validation_callback: Callable[[dict[str, Any]], bool] | None = ...,
              ) -> MemorizedFunc[_P, _R]: ...
    @overload
    def cache(self, func: None = ..., ignore: list[str] | None = ...,
              verbose: int | None = ..., mmap_mode: _MmapMode | Literal[False] = ...,
              cache_validation_callback: Callable[[dict[str, Any]], bool] | None = ...,
              ) -> Callable[[Callable[_P, _R]], MemorizedFunc[_P, _R]]: ...
    def clear(self, warn: bool = ...) -> None: ...
    def reduce_size(self, bytes_limit: int | str | None = ..., items_limit: int | None = ...,
                    age_limit: datetime.timedelta | None = ...) -> None: ...
    def eval(self, func: Callable[..., _R], *args: Any, **kwargs: Any) -> _R: ...
    def __getstate__(self) -> dict[str, Any]: ...

def expires_after(days: float = ..., seconds: float = ..., microseconds: float = ...,
                  milliseconds: float = ..., minutes: float = ..., hours: float = ...,
                  weeks: float = ...) -> Callable[[dict[str, Any]], bool]: ...
