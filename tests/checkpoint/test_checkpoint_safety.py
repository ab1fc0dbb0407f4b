"""Pickle files given as checkpoints are refused before anything in them can run."""

import io
import pickle
import zipfile
from pathlib import Path

import pytest
import torch
from checkpoint_helpers import trained_pair

from bnlab.checkpoint import (
    CheckpointError,
    load_checkpoint,
    read_checkpoint_state,
    save_checkpoint,
)

REFUSAL = (
    r"pickle file \(torch.save\); bnlab checkpoints are safetensors \+ JSON and never unpickle"
)


class Payload:
    """Unpickling this creates ``marker``: proof that code inside the file ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture(autouse=True)
def no_unpickling(monkeypatch):
    """Any unpickling during a test fails it, whatever the file holds."""

    def forbidden(*args, **kwargs):
        raise AssertionError("something tried to unpickle")

    monkeypatch.setattr(torch, "load", forbidden)
    monkeypatch.setattr(pickle, "load", forbidden)
    monkeypatch.setattr(pickle, "loads", forbidden)
    monkeypatch.setattr(
        pickle, "Unpickler", type("NoUnpickler", (pickle.Unpickler,), {"load": forbidden})
    )


def test_the_payload_is_live(tmp_path, monkeypatch):
    monkeypatch.undo()  # this test alone unpickles, to show the payload would run
    marker = tmp_path / "ran"
    pickle.loads(pickle.dumps(Payload(marker)))
    assert marker.exists()


def pickle_bytes(marker):
    return pickle.dumps({"weights": Payload(marker)}, protocol=4)


def torch_save_bytes(marker, legacy=False):
    buffer = io.BytesIO()
    torch.save({"weights": Payload(marker)}, buffer, _use_new_zipfile_serialization=not legacy)
    return buffer.getvalue()


MAKERS = {
    "pickle": pickle_bytes,
    "torch.save": torch_save_bytes,
    "legacy torch.save": lambda marker: torch_save_bytes(marker, legacy=True),
}


@pytest.mark.parametrize("kind", list(MAKERS))
@pytest.mark.parametrize("name", ["weights", "model.pt", "run.ckpt", "data.bin"])
def test_pickle_file_given_as_checkpoint_is_refused(tmp_path, kind, name):
    marker = tmp_path / "ran"
    path = tmp_path / name
    path.write_bytes(MAKERS[kind](marker))
    for read in (load_checkpoint, read_checkpoint_state):
        with pytest.raises(CheckpointError, match=REFUSAL) as info:
            read(path)
        assert str(path) in str(info.value) and "\n" not in str(info.value)
    assert not marker.exists()


@pytest.mark.parametrize("name", ["model.pth", "pytorch_model.bin"])
def test_directory_holding_a_pickle_is_refused(tmp_path, name):
    marker = tmp_path / "ran"
    folder = tmp_path / "downloaded"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / name).write_bytes(torch_save_bytes(marker))
    with pytest.raises(CheckpointError, match=f"holds a pickle file {name} .*never unpickle"):
        load_checkpoint(folder)
    assert not marker.exists()


@pytest.mark.parametrize("member", ["model.safetensors", "state.json"])
def test_pickle_swapped_into_a_checkpoint_is_refused(tmp_path, member):
    marker = tmp_path / "ran"
    model, optimizer = trained_pair()
    save_checkpoint(tmp_path / "ck", model=model, optimizer=optimizer)
    (tmp_path / "ck" / member).write_bytes(torch_save_bytes(marker))
    with pytest.raises(CheckpointError, match=f"holds a pickle file {member} .*never unpickle"):
        load_checkpoint(tmp_path / "ck", model=model, optimizer=optimizer)
    assert not marker.exists()


def test_pickle_extension_is_refused_whatever_its_content(tmp_path):
    path = tmp_path / "notes.pkl"
    path.write_text("plain text")
    with pytest.raises(CheckpointError, match=REFUSAL):
        load_checkpoint(path)


def test_other_files_are_not_called_pickles(tmp_path):
    archive = tmp_path / "archive.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("readme.txt", "hello")
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    for path in (archive, text):
        with pytest.raises(CheckpointError, match="is a file, not a checkpoint directory"):
            load_checkpoint(path)
    folder = tmp_path / "folder"
    folder.mkdir()
    archive.rename(folder / "archive.zip")
    with pytest.raises(CheckpointError, match=r"not a bnlab checkpoint \(no state.json\)"):
        load_checkpoint(folder)


def test_a_file_that_grows_while_read_is_read_in_bounded_chunks(tmp_path, monkeypatch):
    import os

    from bnlab.checkpoint import safety

    path = tmp_path / "data"
    path.write_bytes(b"x" * 100)
    real_fstat = os.fstat

    def fstat_before_it_grew(fd):
        info = real_fstat(fd)
        return os.stat_result((info.st_mode, *info[1:6], 50, *info[7:]))

    monkeypatch.setattr(safety.os, "fstat", fstat_before_it_grew)
    # a limit from a manifest claiming 2**47 bytes: one read of that size raised MemoryError
    assert safety.read_limited(path, 1 << 47) == b"x" * 100
    assert safety.read_limited(path, 80) is None  # grew past the limit


@pytest.mark.parametrize("header_bytes", [640, 896, 1152, 1408])  # first byte 0x80, then 2-5
def test_a_safetensors_file_whose_header_length_reads_like_a_pickle_is_not_refused(
        header_bytes):
    import json

    import safetensors.torch

    from bnlab.checkpoint.safety import looks_like_pickle

    header = json.dumps({"t": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}})
    header = header.encode().ljust(header_bytes)  # (safetensors pads its header with spaces)
    data = header_bytes.to_bytes(8, "little") + header + b"\0" * 8
    assert data[0] == 0x80 and 2 <= data[1] <= 5
    assert safetensors.torch.load(data)["t"].shape == (2,)  # a valid file
    assert not looks_like_pickle(Path("optimizer.safetensors"), data)
    assert looks_like_pickle(Path("optimizer.safetensors"), pickle.dumps({"a": 1}, protocol=2))
