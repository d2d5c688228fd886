"""Caching: ``cyjob.hash`` (content hashes), ``cyjob.Memory`` (a disk cache
of function results with joblib's API), its store backends, single-flight
locks, invalidation and size bound."""

from cyjob.cache.hashing import hash

__all__ = ["hash"]
