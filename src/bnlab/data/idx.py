"""IDX files (the MNIST format): gzip decompression and header/payload parsing.

An IDX file is a 4-byte magic ``00 00 <type> <rank>``, then ``rank`` big-endian uint32
dimensions, then the row-major payload of ``prod(dims)`` big-endian items of ``type``.
Every problem with the bytes, whatever they are, raises :class:`DatasetError` and nothing else.
"""

from __future__ import annotations

import math
import zlib
from os import PathLike
from pathlib import Path

import numpy as np

from .errors import DatasetError

# IDX type code -> big-endian numpy dtype.
IDX_TYPES: dict[int, np.dtype] = {
    0x08: np.dtype("u1"),
    0x09: np.dtype("i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
GZIP_MAGIC = b"\x1f\x8b"
# Largest decompressed size accepted unless the caller gives its own bound (a gzip bomb guard).
MAX_DECOMPRESSED_BYTES = 1 << 31


def header_bytes(dtype_code: int, shape: tuple[int, ...]) -> bytes:
    """The IDX header (magic and dimensions) for an array of ``shape`` and type ``dtype_code``."""
    magic = bytes([0, 0, dtype_code, len(shape)])
    return magic + b"".join(int(d).to_bytes(4, "big") for d in shape)


def encode_idx(array: np.ndarray) -> bytes:
    """The IDX bytes of ``array`` (inverse of :func:`parse_idx`); used to build test files."""
    for code, dtype in IDX_TYPES.items():
        if dtype.kind == array.dtype.kind and dtype.itemsize == array.dtype.itemsize:
            payload = np.ascontiguousarray(array, dtype=dtype).tobytes()
            return header_bytes(code, array.shape) + payload
    raise ValueError(f"no IDX type for dtype {array.dtype}")


def gunzip(
    data: bytes, source: str | PathLike[str], max_size: int = MAX_DECOMPRESSED_BYTES
) -> bytes:
    """Decompress gzip ``data`` (one or more members), checking every CRC and length trailer.

    Raises DatasetError naming ``source`` when the stream is not gzip, is corrupt or truncated,
    has trailing garbage, or inflates to more than ``max_size`` bytes. Zero bytes after the
    last member are padding (blocked storage writes them), ignored as gzip(1) ignores them.
    """
    if data[:2] != GZIP_MAGIC:
        found = f"first bytes {data[:2].hex()}" if data else "an empty file"
        raise DatasetError(source, "a gzip file (starting 1f 8b)", found)
    parts: list[bytes] = []
    size, rest = 0, data
    while rest:
        if not rest.strip(b"\0"):
            break
        if rest[:2] != GZIP_MAGIC:
            raise DatasetError(source, "nothing after the gzip data", f"{len(rest)} trailing bytes")
        inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
        try:
            part = inflater.decompress(rest, max_size - size + 1)
        except zlib.error as err:
            raise DatasetError(source, "an intact gzip stream", f"corrupt data ({err})") from None
        size += len(part)
        parts.append(part)
        if size > max_size:
            raise DatasetError(source, f"at most {max_size} bytes decompressed", "more")
        if not inflater.eof:
            raise DatasetError(source, "a complete gzip stream", "it cut short (truncated file)")
        rest = inflater.unused_data
    return parts[0] if len(parts) == 1 else b"".join(parts)


def parse_idx(raw: bytes | bytearray | memoryview, source: str | PathLike[str]) -> np.ndarray:
    """Decode uncompressed IDX bytes into an array of the header's shape, in native byte order.

    uint8 data is returned without copying (a view of ``raw``; writable when ``raw`` is).
    """
    view = memoryview(raw).cast("B")
    if len(view) < 4:
        raise DatasetError(source, "a 4-byte IDX magic number", f"a file of {len(view)} bytes")
    zero, zero2, code, rank = view[:4]
    if zero or zero2:
        raise DatasetError(
            source, "an IDX magic number starting 00 00", f"{bytes(view[:4]).hex()} (not IDX data)"
        )
    if code not in IDX_TYPES:
        known = ", ".join(f"0x{c:02x}" for c in IDX_TYPES)
        raise DatasetError(source, f"an IDX type code in {known}", f"0x{code:02x}")
    if rank == 0:
        raise DatasetError(source, "an IDX rank of at least 1", "rank 0")
    offset = 4 + 4 * rank
    if len(view) < offset:
        raise DatasetError(
            source, f"a {offset}-byte header for rank {rank}", f"a file of {len(view)} bytes"
        )
    shape = tuple(int.from_bytes(view[4 + 4 * i : 8 + 4 * i], "big") for i in range(rank))
    dtype = IDX_TYPES[code]
    expected = math.prod(shape) * dtype.itemsize
    found = len(view) - offset
    if found != expected:
        raise DatasetError(
            source,
            f"{expected} payload bytes for dimensions {shape} of {dtype.name}",
            f"{found} ({'truncated' if found < expected else 'trailing data'})",
        )
    if math.prod(d for d in shape if d) * dtype.itemsize > np.iinfo(np.intp).max:
        # numpy cannot describe such a shape even when a zero dimension makes it empty
        raise DatasetError(source, "dimensions numpy can represent", f"dimensions {shape}")
    array = np.frombuffer(view, dtype=dtype, offset=offset, count=math.prod(shape)).reshape(shape)
    return array if dtype.itemsize == 1 else array.astype(dtype.newbyteorder("="))


def read_file(path: Path) -> bytes:
    """The bytes of ``path``; an unreadable file raises DatasetError instead of OSError."""
    try:
        return path.read_bytes()
    except OSError as err:
        found = f"{type(err).__name__}: {err.strerror or err}"
        raise DatasetError(path, "a readable file", found) from None


def decode_file_bytes(
    data: bytes, source: str | PathLike[str], max_size: int = MAX_DECOMPRESSED_BYTES
) -> bytes:
    """Uncompressed IDX bytes from a file's bytes: gunzipped when ``source`` ends in ``.gz``."""
    return gunzip(data, source, max_size) if str(source).endswith(".gz") else data
