"""Compression methods: cyjob's own chunk codecs and joblib's registry.

A built-in method compresses independent chunks of a file (one call per
chunk, on a bytes-like object, without the GIL in every library used here),
so chunks can be compressed and decompressed on worker threads.  A method
added with :func:`register_compressor` wraps the whole file in its file
object instead, as joblib does.
"""

import bz2
import lzma
import zlib

INSTALL_EXTRA = 'pip install "cyjob[compress]"'

#: File name extensions that pick a method when ``compress`` does not name one
#: (joblib's, plus ``.zst``).
EXTENSIONS = {".z": "zlib", ".gz": "gzip", ".bz2": "bz2", ".lzma": "lzma", ".xz": "xz",
              ".lz4": "lz4", ".zst": "zstd"}


class MissingCompressorError(ValueError):
    """The compression method needs a package that is not installed."""


class Codec:
    """A built-in chunk codec: ``encode(chunk, level) -> bytes`` and
    ``decode(data, raw_size) -> bytes``; ``ident`` is its number in the file."""

    def __init__(self, name, ident, levels, default_level, encode, decode, package=None):
        self.name = name
        self.ident = ident
        self.levels = levels
        self.default_level = default_level
        self._encode = encode
        self._decode = decode
        self.package = package

    def require(self):
        """Raise :class:`MissingCompressorError` if the codec's package is missing."""
        if self.package is not None:
            try:
                __import__(self.package)
            except ImportError:
                raise MissingCompressorError(
                    f'the "{self.name}" compression method needs the {self.package!r} '
                    f"package, which is not installed: {INSTALL_EXTRA}") from None

    def encode(self, chunk, level):
        return self._encode(chunk, level)

    def decode(self, data, raw_size):
        return self._decode(data, raw_size)


def _gzip_compress(chunk, level):
    # zlib.compress takes wbits only from Python 3.11; a compressobj does everywhere.
    enc = zlib.compressobj(level, zlib.DEFLATED, 31)
    return enc.compress(chunk) + enc.flush()


def _zstd_encode(chunk, level):
    import zstandard

    # A compressor is not thread-safe, and costs ~8 us to make: one per chunk.
    return zstandard.ZstdCompressor(level=level).compress(chunk)


def _zstd_decode(data, raw_size):
    import zstandard

    return zstandard.ZstdDecompressor().decompress(data, max_output_size=raw_size)


def _lz4_encode(chunk, level):
    import lz4.block

    # lz4.frame's meaning of a level (joblib's too): 3 and above is LZ4-HC.
    if level >= 3:
        return lz4.block.compress(chunk, mode="high_compression", compression=level,
                                  store_size=False)
    return lz4.block.compress(chunk, store_size=False)


def _lz4_decode(data, raw_size):
    import lz4.block

    return lz4.block.decompress(data, uncompressed_size=raw_size)


CODECS = {c.name: c for c in [
    Codec("zlib", 1, range(1, 10), 3,
          lambda c, lv: zlib.compress(c, lv),
          lambda d, n: zlib.decompress(d, zlib.MAX_WBITS, max(n, 1))),
    Codec("gzip", 2, range(1, 10), 3,
          lambda c, lv: _gzip_compress(c, lv),
          lambda d, n: zlib.decompress(d, 31, max(n, 1))),
    Codec("bz2", 3, range(1, 10), 9,
          lambda c, lv: bz2.compress(c, lv),
          lambda d, n: bz2.decompress(d)),
    Codec("lzma", 4, range(1, 10), 6,
          lambda c, lv: lzma.compress(c, format=lzma.FORMAT_ALONE, preset=lv),
          lambda d, n: lzma.decompress(d, format=lzma.FORMAT_ALONE)),
    Codec("xz", 5, range(1, 10), 6,
          lambda c, lv: lzma.compress(c, format=lzma.FORMAT_XZ, preset=lv),
          lambda d, n: lzma.decompress(d, format=lzma.FORMAT_XZ)),
    Codec("lz4", 6, range(1, 17), 0, _lz4_encode, _lz4_decode, package="lz4"),
    Codec("zstd", 7, range(1, 23), 3, _zstd_encode, _zstd_decode, package="zstandard"),
]}
CODECS_BY_ID = {c.ident: c for c in CODECS.values()}


# -- joblib's registry of whole-file compressors ------------------------------

class CompressorWrapper:
    """A compressor that wraps the whole file in a file object (joblib's
    ``CompressorWrapper`` interface, for :func:`register_compressor`).

    Parameters
    ----------
    obj : callable
        ``obj(fileobj, mode, compresslevel=...)`` returns a file object that
        (de)compresses into or out of ``fileobj``.
    prefix : bytes
        The first bytes of a file it writes (how ``load`` recognises it).
    extension : str
        A file name extension that picks it in ``dump``.
    """

    def __init__(self, obj, prefix=b"", extension=""):
        self.fileobj_factory = obj
        self.prefix = prefix
        self.extension = extension

    def compressor_file(self, fileobj, compresslevel=None):
        """A file object compressing into ``fileobj``."""
        if compresslevel is None:
            return self.fileobj_factory(fileobj, "wb")
        return self.fileobj_factory(fileobj, "wb", compresslevel=compresslevel)

    def decompressor_file(self, fileobj):
        """A file object decompressing out of ``fileobj``."""
        return self.fileobj_factory(fileobj, "rb")


#: Compressors added by register_compressor, by name.
REGISTERED: "dict[str, CompressorWrapper]" = {}


def register_compressor(compressor_name, compressor, force=False):
    """Register a new compressor (joblib's ``register_compressor``).

    Files written with it are the whole cyjob file passed through the
    compressor's file object; :func:`cyjob.load` recognises them by the
    compressor's ``prefix``.

    Parameters
    ----------
    compressor_name : str
        The name of the compressor, as given to ``dump(compress=...)``.
    compressor : CompressorWrapper
        An object with joblib's ``CompressorWrapper`` interface
        (``fileobj_factory``, ``prefix``, ``extension``, ``compressor_file``,
        ``decompressor_file``); joblib's own class works too.
    force : bool, default=False
        Replace a compressor already registered under that name.
    """
    if not isinstance(compressor_name, str):
        raise ValueError(f"Compressor name should be a string, '{compressor_name}' given.")
    if not all(hasattr(compressor, a) for a in (
            "fileobj_factory", "prefix", "compressor_file", "decompressor_file")):
        raise ValueError("Compressor should implement the CompressorWrapper "
                         f"interface, '{compressor}' given.")
    factory = compressor.fileobj_factory
    if factory is not None and not all(hasattr(factory, a)
                                       for a in ("read", "write", "seek", "tell")):
        raise ValueError("Compressor 'fileobj_factory' attribute should implement "
                         f"the file object interface, '{factory}' given.")
    if (compressor_name in REGISTERED or compressor_name in CODECS) and not force:
        raise ValueError(f"Compressor '{compressor_name}' already registered.")
    REGISTERED[compressor_name] = compressor


def method_names():
    """Every name ``compress`` accepts."""
    return list(CODECS) + [n for n in REGISTERED if n not in CODECS]
