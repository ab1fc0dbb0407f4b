"""IDX parsing and gzip decoding: hand-written bytes, every corruption path, and properties."""

from __future__ import annotations

import gzip
import pickle
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bnlab.data import DatasetError, encode_idx, gunzip, parse_idx
from bnlab.data.idx import decode_file_bytes, read_file

PROPERTY = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
VALID = bytes.fromhex("00000803" "00000002" "00000001" "00000003") + bytes(range(6))


def test_parses_hand_written_ubyte_file():
    array = parse_idx(VALID, "f.idx")
    assert array.dtype == np.uint8 and array.shape == (2, 1, 3)
    assert array.tolist() == [[[0, 1, 2]], [[3, 4, 5]]]


def test_parses_big_endian_multibyte_types_to_native_values():
    int16 = bytes.fromhex("00000B01" "00000002" "0102" "FFFE")
    assert parse_idx(int16, "f").tolist() == [258, -2]
    float32 = bytes.fromhex("00000D01" "00000001" "3FC00000")  # 1.5 in IEEE 754
    assert parse_idx(float32, "f").tolist() == [1.5]
    assert parse_idx(bytes.fromhex("00000801" "00000000"), "f").shape == (0,)


@pytest.mark.parametrize("dtype", ["u1", "i1", "i2", "i4", "f4", "f8"])
def test_encode_parse_roundtrip(dtype):
    array = (np.arange(24) - 7).reshape(2, 3, 4).astype(dtype)
    np.testing.assert_array_equal(parse_idx(encode_idx(array), "f"), array)


def test_uint8_array_is_a_view_writable_when_the_buffer_is():
    assert parse_idx(bytearray(VALID), "f").flags.writeable
    assert not parse_idx(VALID, "f").flags.writeable


@pytest.mark.parametrize(
    ("raw", "expected", "found"),
    [
        (b"", "4-byte IDX magic", "0 bytes"),
        (bytes.fromhex("01000801") + bytes(4), "starting 00 00", "01000801"),
        (bytes.fromhex("00000701") + bytes(4), "IDX type code", "0x07"),
        (bytes.fromhex("00000800"), "rank of at least 1", "rank 0"),
        (bytes.fromhex("00000803" "00000002"), "16-byte header for rank 3", "8 bytes"),
        (VALID[:-1], "6 payload bytes for dimensions (2, 1, 3)", "5 (truncated)"),
        (VALID + b"\0", "6 payload bytes", "7 (trailing data)"),
        (bytes.fromhex("00000C01" "00000002") + bytes(7), "8 payload bytes", "7 (truncated)"),
    ],
)
def test_each_malformed_header_or_payload_is_reported(raw, expected, found):
    with pytest.raises(DatasetError) as info:
        parse_idx(raw, "data/x-idx3-ubyte")
    err = info.value
    assert err.file == "data/x-idx3-ubyte"
    assert expected in err.expected and found in err.found
    assert all(hint in err.fix for hint in ("re-download", "dataset-fashion-mnist", "--data-dir"))


def test_error_message_is_one_line_and_survives_pickling():
    err = DatasetError("a/b.gz", "one\nthing", "another\tthing")
    assert "\n" not in str(err) and str(err).startswith("a/b.gz: expected one thing")
    copy = pickle.loads(pickle.dumps(err))
    assert str(copy) == str(err) and copy.found == "another\tthing"


def test_gunzip_valid_and_multi_member():
    assert gunzip(gzip.compress(VALID), "f.gz") == VALID
    assert gunzip(gzip.compress(VALID[:5]) + gzip.compress(VALID[5:]), "f.gz") == VALID


@pytest.mark.parametrize(
    ("mangle", "found"),
    [
        (lambda z: b"", "empty file"),
        (lambda z: b"PK" + z[2:], "first bytes 504b"),
        (lambda z: z[:-6], "cut short"),
        (lambda z: z[:10], "cut short"),
        (lambda z: z[:-8] + (zlib.crc32(VALID) ^ 1).to_bytes(4, "little") + z[-4:], "corrupt"),
        (lambda z: z[:-4] + (len(VALID) + 1).to_bytes(4, "little"), "corrupt"),
        (lambda z: z + b"junk", "4 trailing bytes"),
        (lambda z: z + b"\0\0junk", "6 trailing bytes"),  # zeros then more: not padding
    ],
)
def test_each_gzip_corruption_is_reported(mangle, found):
    with pytest.raises(DatasetError) as info:
        gunzip(mangle(gzip.compress(VALID, mtime=0)), "x.gz")
    assert found in info.value.found and info.value.file == "x.gz"


def test_zero_padding_after_the_last_member_is_ignored_as_gzip_does():
    padded = gzip.compress(VALID, mtime=0) + bytes(512)
    assert gunzip(padded, "x.gz") == VALID == gzip.decompress(padded)


def test_gunzip_refuses_to_inflate_beyond_the_bound():
    bomb = gzip.compress(bytes(10_000))
    with pytest.raises(DatasetError, match="at most 9999 bytes"):
        gunzip(bomb, "bomb.gz", max_size=9_999)
    assert len(gunzip(bomb, "bomb.gz", max_size=10_000)) == 10_000


def test_read_file_turns_os_errors_into_dataset_errors(tmp_path):
    for path in (tmp_path / "missing.gz", tmp_path):
        with pytest.raises(DatasetError, match="a readable file"):
            read_file(path)


def _decode(data: bytes, name: str):
    """The full byte path: gunzip when .gz, then parse; returns an array or raises."""
    return parse_idx(decode_file_bytes(data, name), name)


def _only_dataset_errors(data: bytes, name: str) -> None:
    try:
        result = _decode(data, name)
    except DatasetError as err:
        assert name in str(err)
    else:
        assert isinstance(result, np.ndarray)


@PROPERTY
@given(st.binary(max_size=300), st.sampled_from(["f.gz", "f-idx1-ubyte"]))
def test_random_bytes_raise_only_dataset_error(data, name):
    _only_dataset_errors(data, name)


@PROPERTY
@given(st.binary(max_size=64))
def test_random_bytes_after_a_valid_magic_raise_only_dataset_error(tail):
    for magic in (b"\0\0\x08\x01", b"\0\0\x08\x03", b"\0\0\x0e\x02"):
        _only_dataset_errors(magic + tail, "f-idx")


GOOD_GZ = gzip.compress(encode_idx(np.arange(60, dtype=np.uint8).reshape(3, 4, 5)), mtime=0)


@PROPERTY
@given(st.integers(0, len(GOOD_GZ) - 1), st.sampled_from(["f.gz", "f-idx3-ubyte"]))
def test_every_truncation_raises_dataset_error(cut, name):
    data = GOOD_GZ if name.endswith(".gz") else encode_idx(np.arange(60, dtype=np.uint8))
    with pytest.raises(DatasetError):
        _decode(data[: min(cut, len(data) - 1)], name)


@PROPERTY
@given(st.data())
def test_bit_flips_raise_only_dataset_error(data):
    blob = bytearray(GOOD_GZ)
    for _ in range(data.draw(st.integers(1, 3))):
        blob[data.draw(st.integers(0, len(blob) - 1))] ^= 1 << data.draw(st.integers(0, 7))
    _only_dataset_errors(bytes(blob), "f.gz")


@PROPERTY
@given(st.lists(st.integers(0, 2**32 - 1), min_size=1, max_size=4), st.integers(0, 64))
def test_wrong_dimensions_are_caught_against_payload_length(dims, payload):
    raw = bytes([0, 0, 8, len(dims)]) + b"".join(d.to_bytes(4, "big") for d in dims)
    raw += bytes(payload)
    consistent = int(np.prod(dims, dtype=object)) == payload
    try:
        array = parse_idx(raw, "f")
    except DatasetError as err:  # a consistent empty shape may still be beyond numpy's range
        assert ("numpy can represent" if consistent else "payload bytes") in err.expected
    else:
        assert consistent and array.shape == tuple(dims)
