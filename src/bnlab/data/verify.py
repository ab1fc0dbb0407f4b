"""The four official Fashion-MNIST files, their pinned checksums, and checking bytes against them.

Checksums are of the decompressed IDX bytes: the Debian package ``dataset-fashion-mnist``
recompressed the gzip headers, so only the decompressed bytes are the same everywhere.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from os import PathLike

from .errors import DatasetError


@dataclass(frozen=True)
class FileSpec:
    """One IDX file: its name on the mirrors (without ``.gz``), shape and checksums.

    ``sha256``/``md5`` are of the decompressed IDX bytes; ``gz_md5`` is Zalando's published MD5
    of the ``.gz`` archive (informational: other packagings recompress).
    """

    name: str
    shape: tuple[int, ...]
    sha256: str
    md5: str
    gz_md5: str = ""

    @property
    def size(self) -> int:
        """Length in bytes of the decompressed IDX file (header + uint8 payload)."""
        return 4 + 4 * len(self.shape) + math.prod(self.shape)

    @property
    def archive(self) -> str:
        """File name of the gzip archive, as served by the mirrors."""
        return f"{self.name}.gz"


@dataclass(frozen=True)
class SplitSpec:
    """The images file and the labels file of one split (train or test)."""

    images: FileSpec
    labels: FileSpec


TRAIN = SplitSpec(
    images=FileSpec(
        "train-images-idx3-ubyte",
        (60000, 28, 28),
        sha256="c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
        md5="f4a8712d7a061bf5bd6d2ca38dc4d50a",
        gz_md5="8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    ),
    labels=FileSpec(
        "train-labels-idx1-ubyte",
        (60000,),
        sha256="bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
        md5="9018921c3c673c538a1fc5bad174d6f9",
        gz_md5="25c81989df183df01b3e8a0aad5dffbe",
    ),
)
TEST = SplitSpec(
    images=FileSpec(
        "t10k-images-idx3-ubyte",
        (10000, 28, 28),
        sha256="5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
        md5="8181f5470baa50b63fa0f6fddb340f0a",
        gz_md5="bef4ecab320f06d8554ea6380940ec79",
    ),
    labels=FileSpec(
        "t10k-labels-idx1-ubyte",
        (10000,),
        sha256="0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
        md5="15d484375f8d13e6eb1aabb0c3f46965",
        gz_md5="bb300cfdad3c16e7a12a480ee83cd310",
    ),
)
FILES: tuple[FileSpec, ...] = (TRAIN.images, TRAIN.labels, TEST.images, TEST.labels)

OFFICIAL = "official"  # the bytes are the official file's (SHA-256 match)
CUSTOM = "custom"  # a well-formed file of another size: a user's own data, accepted from roots


def sha256_hex(data: bytes | bytearray | memoryview) -> str:
    """Hex SHA-256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def check_against_spec(
    raw: bytes | bytearray, spec: FileSpec, source: str | PathLike[str], *, allow_custom: bool
) -> str:
    """Check decompressed IDX bytes against ``spec``; return :data:`OFFICIAL` or :data:`CUSTOM`.

    Bytes of the official length must match the pinned SHA-256. Bytes of another length are
    the user's own data (:data:`CUSTOM`) when ``allow_custom`` (explicit ``root``/``BNLAB_DATA``
    directories), and a DatasetError otherwise. Structure is checked by the IDX parser.
    """
    if len(raw) == spec.size:
        found = sha256_hex(raw)
        if found != spec.sha256:
            raise DatasetError(
                source, f"the official {spec.name} (SHA-256 {spec.sha256})", f"SHA-256 {found}"
            )
        return OFFICIAL
    if not allow_custom:
        raise DatasetError(
            source, f"the official {spec.name} ({spec.size} bytes unpacked)", f"{len(raw)} bytes"
        )
    return CUSTOM
