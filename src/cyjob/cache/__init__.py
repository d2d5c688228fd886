"""Caching: ``cyjob.hash`` (content hashes), ``cyjob.Memory`` (a disk cache
of function results with joblib's API), its store backends, single-flight
locks, invalidation and size bound."""

from cyjob.cache.hashing import hash
from cyjob.cache.memory import MemorizedFunc, MemorizedResult, Memory, expires_after
from cyjob.cache.store import register_store_backend

__all__ = ["hash", "Memory", "MemorizedFunc", "MemorizedResult", "expires_after",
           "register_store_backend"]
