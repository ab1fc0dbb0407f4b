"""A crash at any point of a save leaves a loadable checkpoint: the complete old or new one."""

import os
import shutil

import pytest
import torch
from checkpoint_helpers import bitwise_equal, make_model, train_steps, trained_pair
from torch import nn

from bnlab.checkpoint import (
    CheckpointError,
    atomic,
    load_checkpoint,
    read_checkpoint_state,
    save_checkpoint,
)


class Crash(BaseException):
    """Stands for the process dying: not an Exception, so nothing handles it."""


def crash_on_call(monkeypatch, owner, name, n, before=None):
    """Make ``owner.name`` raise Crash on its ``n``-th call (0-based), after ``before(*args)``."""
    real = getattr(owner, name)
    calls = {"n": 0}

    def wrapper(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] - 1 == n:
            if before is not None:
                before(*args)
            raise Crash
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, name, wrapper)


def write_half(path, data):
    with open(path, "xb") as f:
        f.write(data[: len(data) // 2])


def remove_some(path, *args, **kwargs):
    (path / "model.safetensors").unlink()


# (patched function, which call crashes, side effect before the crash, checkpoint expected)
CRASH_POINTS = {
    "writing model": (atomic, "write_file", 0, write_half, "old"),
    "writing optimizer": (atomic, "write_file", 1, write_half, "old"),
    "writing state.json": (atomic, "write_file", 2, write_half, "old"),
    "fsync of the temp dir": (atomic, "fsync_directory", 0, None, "old"),
    "renaming the old aside": (os, "rename", 0, None, "old"),
    "renaming the new in": (os, "rename", 1, None, "old"),
    "fsync of the parent": (atomic, "fsync_directory", 1, None, "new"),
    "removing the old": (shutil, "rmtree", 0, remove_some, "new"),
}


def two_versions():
    model, optimizer = trained_pair()
    old = {k: v.clone() for k, v in model.state_dict().items()}
    train_steps(model, optimizer, 1)
    return model, optimizer, old


@pytest.mark.parametrize("point", list(CRASH_POINTS))
def test_crash_during_save_leaves_old_or_new_checkpoint(tmp_path, monkeypatch, point):
    owner, name, n, before, expected = CRASH_POINTS[point]
    target = tmp_path / "run" / "checkpoint"
    model, optimizer, old = two_versions()
    fresh = make_model(0)
    fresh.load_state_dict(old)
    save_checkpoint(target, model=fresh, optimizer=optimizer, state={"epoch": 1})

    with monkeypatch.context() as patch:
        crash_on_call(patch, owner, name, n, before)
        with pytest.raises(Crash):
            save_checkpoint(target, model=model, optimizer=optimizer, state={"epoch": 2})

    reloaded = make_model(5)
    ckpt = load_checkpoint(target, model=reloaded)  # verifies every file against state.json
    want_epoch, want_weights = (1, old) if expected == "old" else (2, model.state_dict())
    assert ckpt.state["epoch"] == want_epoch
    assert read_checkpoint_state(target)["epoch"] == want_epoch
    assert bitwise_equal(dict(reloaded.state_dict()), dict(want_weights))

    save_checkpoint(target, model=model, state={"epoch": 3})  # recovers and cleans up
    assert load_checkpoint(target).state["epoch"] == 3
    assert [p.name for p in target.parent.iterdir()] == ["checkpoint"]


def test_crash_in_the_rename_window_then_another_crash_keeps_the_old(tmp_path, monkeypatch):
    target = tmp_path / "checkpoint"
    model, optimizer, old = two_versions()
    save_checkpoint(target, model=model, state={"epoch": 1})
    with monkeypatch.context() as patch:
        crash_on_call(patch, os, "rename", 1)
        with pytest.raises(Crash):
            save_checkpoint(target, model=model, state={"epoch": 2})
    assert not target.exists()  # only the copy renamed aside is left
    with monkeypatch.context() as patch:
        crash_on_call(patch, atomic, "write_file", 0, write_half)
        with pytest.raises(Crash):
            save_checkpoint(target, model=model, state={"epoch": 3})
    assert target.is_dir()  # put back in place before the new write started
    assert load_checkpoint(target).state["epoch"] == 1


def test_crash_on_the_first_save_leaves_no_checkpoint(tmp_path, monkeypatch):
    target = tmp_path / "checkpoint"
    model, _ = trained_pair()
    with monkeypatch.context() as patch:
        crash_on_call(patch, os, "rename", 0)
        with pytest.raises(Crash):
            save_checkpoint(target, model=model)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(target)
    save_checkpoint(target, model=model, state={"epoch": 4})
    assert load_checkpoint(target).state["epoch"] == 4
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint"]


def test_io_error_keeps_the_old_checkpoint_and_leaves_no_debris(tmp_path, monkeypatch):
    target = tmp_path / "checkpoint"
    model, _ = trained_pair()
    save_checkpoint(target, model=model, state={"epoch": 1})

    def disk_full(path, data):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(atomic, "write_file", disk_full)
    with pytest.raises(CheckpointError, match="could not be written.*No space left"):
        save_checkpoint(target, model=model, state={"epoch": 2})
    assert load_checkpoint(target).state["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint"]


def test_stale_temp_dirs_are_ignored_then_removed(tmp_path):
    target = tmp_path / "checkpoint"
    model, _ = trained_pair()
    save_checkpoint(target, model=model, state={"epoch": 1})
    stale = tmp_path / ".checkpoint.tmp-00000000000000000001-1"
    stale.mkdir()
    (stale / "state.json").write_text("{not json")
    assert load_checkpoint(target).state["epoch"] == 1
    save_checkpoint(target, model=model, state={"epoch": 2})
    assert not stale.exists()


def test_refuses_to_replace_a_directory_with_other_files(tmp_path):
    target = tmp_path / "results"
    target.mkdir()
    (target / "notes.txt").write_text("keep me")
    model, _ = trained_pair()
    with pytest.raises(CheckpointError, match="notes.txt.*new or empty directory"):
        save_checkpoint(target, model=model)
    assert (target / "notes.txt").read_text() == "keep me"
    empty = tmp_path / "empty"
    empty.mkdir()
    save_checkpoint(empty, model=model)
    assert torch.equal(load_checkpoint(empty).model_state["0.weight"], model[0].weight)


def test_refuses_to_replace_a_file(tmp_path):
    target = tmp_path / "checkpoint"
    target.write_text("x")
    with pytest.raises(CheckpointError, match="not a directory"):
        save_checkpoint(target, model=make_model(0))
    assert target.read_text() == "x"


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="names fds through /proc")
def test_every_file_and_both_directories_are_fsynced(tmp_path, monkeypatch):
    model, optimizer = trained_pair()
    synced = []
    real_fsync = os.fsync

    def spy(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", spy)
    save_checkpoint(tmp_path / "checkpoint", model=model, optimizer=optimizer)
    names = [os.path.basename(p) for p in synced]
    assert names[:3] == ["model.safetensors", "optimizer.safetensors", "state.json"]
    assert names[3].startswith(".checkpoint.tmp-")  # the temp dir, before the swap
    assert synced[4] == str(tmp_path)  # the parent, after the swap


def test_a_failed_fsync_after_the_swap_keeps_the_new_copy_quietly(tmp_path, monkeypatch):
    target = tmp_path / "checkpoint"
    model, _ = trained_pair()
    save_checkpoint(target, model=model, state={"epoch": 1})
    real = atomic.fsync_directory

    def parent_fails(directory, *, strict=False):
        if directory == tmp_path:
            if strict:
                raise OSError(5, "Input/output error")
            return
        real(directory, strict=strict)

    monkeypatch.setattr(atomic, "fsync_directory", parent_fails)
    save_checkpoint(target, model=model, state={"epoch": 2})  # the new copy is in place
    assert read_checkpoint_state(target)["epoch"] == 2
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint"]


def test_a_load_during_a_save_reads_one_whole_checkpoint(tmp_path, monkeypatch):
    # The reader opens files one by one: a save swapping the directory in between used to
    # pair the old state.json with the new model file ("corrupted: SHA-256 differs").
    from bnlab.checkpoint import api

    first, second = nn.Linear(3, 2), nn.Linear(3, 2)
    path = save_checkpoint(tmp_path / "ck", model=first, state={"epoch": 1})
    real_read_listed = api._read_listed
    saves = []

    def read_listed_while_saving(found, name, run):
        if not saves:  # the trainer saves its next epoch right now
            saves.append(save_checkpoint(path, model=second, state={"epoch": 2}))
        return real_read_listed(found, name, run)

    monkeypatch.setattr(api, "_read_listed", read_listed_while_saving)
    fresh = nn.Linear(3, 2)
    checkpoint = load_checkpoint(path, model=fresh)
    assert checkpoint.state["epoch"] == 2
    assert torch.equal(fresh.weight, second.weight)
