from typing import Literal

__all__ = ["hash"]

def hash(obj: object, hash_name: Literal["xxh3_128", "md5", "sha1"] = ...,
         coerce_mmap: bool = ...) -> str: ...
