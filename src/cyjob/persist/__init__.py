"""Persistence: ``dump`` / ``load`` with joblib's API.

- ``format``: cyjob's file (header, pickle stream, aligned out-of-band
  buffers, checksums, compressed frames)
- ``codecs``: compression methods, joblib's ``register_compressor``
- ``atomic``: crash-safe writes (temporary file + rename)
- ``joblib_format``: reading the files ``joblib.dump`` writes
- ``restricted``: what ``load(..., trusted=False)`` lets through
"""

import importlib

# ``dump``/``load`` need numpy; ``cyjob.persist.atomic`` (crash-safe writes,
# which cyjob.Memory's store uses too) does not, and importing it runs this
# file: the public names resolve on first use (PEP 562).
_LAZY = {"dump": "api", "load": "api",
         "register_compressor": "codecs", "CompressorWrapper": "codecs",
         "MissingCompressorError": "codecs", "CorruptFileError": "format",
         "UntrustedTypeError": "restricted",
         #: (joblib.numpy_pickle's name) Arrays in a cyjob file start on a
         #: multiple of this many bytes from its start: 64 (joblib: 16).
         "NUMPY_ARRAY_ALIGNMENT_BYTES": "format"}
_RENAMED = {"NUMPY_ARRAY_ALIGNMENT_BYTES": "ALIGN"}


def __getattr__(name):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'cyjob.persist' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"cyjob.persist.{module}"), _RENAMED.get(name, name))
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY))


__all__ = ["dump", "load", "register_compressor", "CompressorWrapper", "CorruptFileError",
           "UntrustedTypeError", "MissingCompressorError", "NUMPY_ARRAY_ALIGNMENT_BYTES"]
