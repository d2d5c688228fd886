"""Type stubs for cyjob.persist (see api.py)."""

import os
import pickle
from typing import IO, Any, Callable, Iterable, Literal

from typing_extensions import TypeAlias

_Method: TypeAlias = str
_Compress: TypeAlias = bool | int | str | tuple[str, int | None]
_MmapMode: TypeAlias = Literal["r+", "r", "w+", "c"] | None

def dump(
    value: Any,
    filename: str | os.PathLike[str] | IO[bytes],
    compress: _Compress = ...,
    protocol: int | None = ...,
) -> list[str] | None: ...
def load(
    filename: str | os.PathLike[str] | IO[bytes],
    mmap_mode: _MmapMode = ...,
    ensure_native_byte_order: bool | Literal["auto"] = ...,
    *,
    trusted: bool = ...,
    allowed: Iterable[type | Callable[..., Any] | str] | None = ...,
) -> Any: ...

class CompressorWrapper:
    fileobj_factory: Any
    prefix: bytes
    extension: str
    def __init__(self, obj: Any, prefix: bytes = ..., extension: str = ...) -> None: ...
    def compressor_file(self, fileobj: IO[bytes], compresslevel: int | None = ...) -> Any: ...
    def decompressor_file(self, fileobj: IO[bytes]) -> Any: ...

def register_compressor(compressor_name: str, compressor: Any, force: bool = ...) -> None: ...

NUMPY_ARRAY_ALIGNMENT_BYTES: int

class CorruptFileError(ValueError): ...
class UntrustedTypeError(pickle.UnpicklingError): ...
class MissingCompressorError(ValueError): ...

__all__ = ["dump", "load", "register_compressor", "CompressorWrapper", "CorruptFileError",
           "UntrustedTypeError", "MissingCompressorError", "NUMPY_ARRAY_ALIGNMENT_BYTES"]
