"""``bnlab data info`` / ``bnlab data download`` on tiny files; no network, no real cache."""

from __future__ import annotations

import gzip
import hashlib

import numpy as np
import pytest

from bnlab.cli.main import main
from bnlab.data import FileSpec, encode_idx, read, sources
from bnlab.data.verify import SplitSpec

NAMES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
         "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


@pytest.fixture(autouse=True)
def isolated(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("BNLAB_DATA", raising=False)
    monkeypatch.setattr(sources, "SYSTEM_DIR", tmp_path / "system")


def write_tiny(directory) -> tuple[FileSpec, ...]:
    """Four small gzipped IDX files; returns FileSpecs they match."""
    rng = np.random.default_rng(0)
    arrays = [rng.integers(0, 256, (6, 28, 28), dtype=np.uint8), rng.integers(0, 10, 6, np.uint8),
              rng.integers(0, 256, (3, 28, 28), dtype=np.uint8), rng.integers(0, 10, 3, np.uint8)]
    directory.mkdir(parents=True, exist_ok=True)
    specs = []
    for name, array in zip(NAMES, arrays, strict=True):
        raw = encode_idx(array)
        (directory / f"{name}.gz").write_bytes(gzip.compress(raw, mtime=0))
        specs.append(FileSpec(name, array.shape, hashlib.sha256(raw).hexdigest(), ""))
    return tuple(specs)


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("bnlab data: error: ")
    return err


def test_info_reports_source_and_each_file(tmp_path, capsys):
    write_tiny(tmp_path / "fm")
    assert main(["data", "info", "--data-dir", str(tmp_path / "fm")]) == 0
    out = capsys.readouterr().out
    assert f"source: root ({tmp_path / 'fm'})" in out
    assert out.count("custom (well-formed, not the official file") == 4
    assert str(tmp_path / "fm" / "t10k-labels-idx1-ubyte.gz") in out


def test_info_flags_a_damaged_file(tmp_path, capsys):
    write_tiny(tmp_path / "fm")
    victim = tmp_path / "fm" / "train-labels-idx1-ubyte.gz"
    victim.write_bytes(victim.read_bytes()[:-3])
    assert main(["data", "info", "--data-dir", str(tmp_path / "fm")]) == 1
    damaged = [line for line in capsys.readouterr().out.splitlines() if "DAMAGED" in line]
    assert len(damaged) == 1 and str(victim) in damaged[0] and "cut short" in damaged[0]


def test_info_without_data_is_one_line_and_exit_2(capsys):
    assert main(["data", "info"]) == 2
    err = one_error_line(capsys)
    assert "dataset-fashion-mnist" in err and "--data-dir" in err


def test_download_fetches_from_the_given_mirror_and_verifies(tmp_path, capsys, monkeypatch):
    specs = write_tiny(tmp_path / "mirror")
    train, test = SplitSpec(specs[0], specs[1]), SplitSpec(specs[2], specs[3])
    monkeypatch.setattr(sources, "FILES", specs)
    monkeypatch.setattr(read, "TRAIN", train)
    monkeypatch.setattr(read, "TEST", test)
    target = tmp_path / "fm"
    mirror = (tmp_path / "mirror").as_uri() + "/"
    assert main(["data", "download", "--data-dir", str(target), "--mirror", mirror,
                 "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "downloaded: " + ", ".join(NAMES) in out
    assert out.count("verified (SHA-256 of the official file)") == 4
    for name in NAMES:
        served = (tmp_path / "mirror" / f"{name}.gz").read_bytes()
        assert (target / f"{name}.gz").read_bytes() == served


def test_download_failure_is_one_line_and_exit_2(tmp_path, capsys):
    args = ["data", "download", "--data-dir", str(tmp_path / "fm"), "--mirror",
            "http://127.0.0.1:9/", "--attempts", "1", "--quiet"]
    assert main(args) == 2
    assert "127.0.0.1:9/train-images-idx3-ubyte.gz" in one_error_line(capsys)
    assert not (tmp_path / "fm" / "train-images-idx3-ubyte.gz").exists()


def test_download_rejects_bad_options(capsys):
    assert main(["data", "download", "--attempts", "0"]) == 2
    assert "--attempts" in one_error_line(capsys)


@pytest.mark.parametrize("flag", ["inf", "nan", "-1", "1e9"])
def test_download_rejects_a_timeout_no_socket_takes(flag, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["data", "download", "--timeout", flag])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "argument --timeout: " in err and err.count("\n") == 1


@pytest.mark.parametrize("damage", ["label 10", "one label short", "no samples"])
def test_info_checks_each_split_as_loading_does(damage, tmp_path, capsys):
    write_tiny(tmp_path / "fm")
    labels_path = tmp_path / "fm" / "train-labels-idx1-ubyte.gz"
    labels = np.frombuffer(gzip.decompress(labels_path.read_bytes())[8:], np.uint8).copy()
    images_path = tmp_path / "fm" / "train-images-idx3-ubyte.gz"
    if damage == "label 10":
        labels[2] = 10
    elif damage == "one label short":
        labels = labels[:-1]
    else:
        labels = labels[:0]
        images_path.write_bytes(gzip.compress(encode_idx(np.zeros((0, 28, 28), np.uint8))))
    labels_path.write_bytes(gzip.compress(encode_idx(labels)))
    assert main(["data", "info", "--data-dir", str(tmp_path / "fm")]) == 1
    damaged = [line for line in capsys.readouterr().out.splitlines() if "DAMAGED" in line]
    assert len(damaged) == 1 and str(labels_path) in damaged[0]
    assert "correct or replace the file" in damaged[0]  # the user's own files: not "delete"


def test_info_checks_that_the_splits_images_share_a_size(tmp_path, capsys):
    write_tiny(tmp_path / "fm")
    test_images = tmp_path / "fm" / "t10k-images-idx3-ubyte.gz"
    test_images.write_bytes(gzip.compress(encode_idx(np.zeros((3, 10, 10), np.uint8))))
    assert main(["data", "info", "--data-dir", str(tmp_path / "fm")]) == 1
    damaged = [line for line in capsys.readouterr().out.splitlines() if "DAMAGED" in line]
    assert len(damaged) == 1 and str(test_images) in damaged[0]
    assert "train split's size (28, 28)" in damaged[0]
