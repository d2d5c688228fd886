"""Persistence: ``dump`` / ``load`` with joblib's API.

- ``format``: cyjob's file (header, pickle stream, aligned out-of-band
  buffers, checksums, compressed frames)
- ``codecs``: compression methods, joblib's ``register_compressor``
- ``atomic``: crash-safe writes (temporary file + rename)
- ``joblib_format``: reading the files ``joblib.dump`` writes
- ``restricted``: what ``load(..., trusted=False)`` lets through
"""

from cyjob.persist.api import dump, load
from cyjob.persist.codecs import CompressorWrapper, MissingCompressorError, register_compressor
from cyjob.persist.format import ALIGN as NUMPY_ARRAY_ALIGNMENT_BYTES
from cyjob.persist.format import CorruptFileError
from cyjob.persist.restricted import UntrustedTypeError

#: (joblib.numpy_pickle's name) Arrays in a cyjob file start on a multiple of
#: this many bytes from its start: 64 (joblib: 16).
NUMPY_ARRAY_ALIGNMENT_BYTES = NUMPY_ARRAY_ALIGNMENT_BYTES

__all__ = ["dump", "load", "register_compressor", "CompressorWrapper", "CorruptFileError",
           "UntrustedTypeError", "MissingCompressorError", "NUMPY_ARRAY_ALIGNMENT_BYTES"]
