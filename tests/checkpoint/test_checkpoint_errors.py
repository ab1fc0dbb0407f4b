"""Damaged or mismatched checkpoints fail with one CheckpointError line naming file and problem,
and a failed load changes nothing."""

import hashlib
import json
import pickle

import pytest
import safetensors.torch
import torch
from checkpoint_helpers import bitwise_equal, make_model, make_optimizer, trained_pair
from torch import nn

from bnlab.checkpoint import (
    CheckpointError,
    load_checkpoint,
    read_checkpoint_state,
    save_checkpoint,
)


@pytest.fixture
def saved(tmp_path):
    model, optimizer = trained_pair()
    path = save_checkpoint(tmp_path / "ck", model=model, optimizer=optimizer, state={"epoch": 3})
    return path, model, optimizer


def edit_state(path, **changes):
    state = json.loads((path / "state.json").read_text())
    state.update(changes)
    (path / "state.json").write_text(json.dumps(state))


def rewrite_file(path, name, data):
    """Replace a data file and make state.json's manifest agree, so only the parser can tell."""
    (path / name).write_bytes(data)
    state = json.loads((path / "state.json").read_text())
    state["files"][name] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (path / "state.json").write_text(json.dumps(state))


def expect_error(path, pattern, **targets):
    with pytest.raises(CheckpointError, match=pattern) as info:
        load_checkpoint(path, **targets)
    message = str(info.value)
    assert "\n" not in message and "; " in message  # one line: problem; what to do
    return message


def test_missing_directory(tmp_path):
    message = expect_error(tmp_path / "nope", "does not exist")
    assert str(tmp_path / "nope") in message


def test_missing_file(saved):
    path, _, _ = saved
    (path / "model.safetensors").unlink()
    assert str(path / "model.safetensors") in expect_error(path, "is missing")


def test_truncated_file(saved):
    path, _, _ = saved
    data = (path / "optimizer.safetensors").read_bytes()
    (path / "optimizer.safetensors").write_bytes(data[:-100])
    expect_error(path, r"optimizer.safetensors: is truncated or altered \(\d+ bytes, expected")


def test_corrupted_byte(saved):
    path, _, _ = saved
    data = bytearray((path / "model.safetensors").read_bytes())
    data[-3] ^= 0x01  # one bit of one weight
    (path / "model.safetensors").write_bytes(bytes(data))
    expect_error(path, r"model.safetensors: is corrupted \(SHA-256")


@pytest.mark.parametrize(
    "data, pattern",
    [
        (b"\x01", "is truncated"),
        (b"\xff" * 8 + b"{}", "is truncated or not safetensors"),
        (b"\x04\x00\x00\x00\x00\x00\x00\x00{x:1", "not a safetensors file"),
        (b"\x02\x00\x00\x00\x00\x00\x00\x00{}", "is not a bnlab model file"),
        (safetensors.torch.save({"w": torch.ones(2)})[:-4], "not a valid safetensors file"),
    ],
)
def test_malformed_safetensors_with_a_matching_manifest(saved, data, pattern):
    path, _, _ = saved
    rewrite_file(path, "model.safetensors", data)
    expect_error(path, "model.safetensors: .*" + pattern)


def test_bad_json(saved):
    path, _, _ = saved
    (path / "state.json").write_text('{"format": "bnlab-checkpoint",')
    expect_error(path, r"state.json: is not valid JSON")
    with pytest.raises(CheckpointError, match="is not valid JSON"):
        read_checkpoint_state(path)


@pytest.mark.parametrize(
    "changes, pattern",
    [
        ({"format": "other"}, r"is not a bnlab checkpoint state \(format 'other'"),
        ({"version": 2}, "checkpoint version 2; this bnlab reads version 1; upgrade bnlab"),
        ({"version": "1"}, "checkpoint version '1'"),
        ({"epoch": -1}, "'epoch' must be an int >= 0"),
        ({"epoch": True}, "'epoch' must be an int >= 0"),
        ({"history": {}}, "'history' must be a list"),
        ({"files": {"model.safetensors": {"bytes": 1}}}, "malformed 'files' entry"),
        ({"files": {"model.safetensors": {"bytes": 2**63, "sha256": "0"}}},
         "malformed 'files' entry"),
        ({"files": {}}, "lists no model.safetensors"),
    ],
)
def test_invalid_run_state(saved, changes, pattern):
    path, _, _ = saved
    edit_state(path, **changes)
    expect_error(path, "state.json: .*" + pattern)
    with pytest.raises(CheckpointError, match=pattern):
        read_checkpoint_state(path)


class Wider(nn.Module):
    def __init__(self):
        super().__init__()
        self.layer = nn.Linear(6, 8)


def test_model_key_mismatch_names_the_keys(saved):
    path, _, _ = saved
    message = expect_error(path, "model.safetensors: does not match the model", model=Wider())
    assert "missing keys layer.weight, layer.bias" in message
    assert "unexpected keys 0.bias, 0.weight" in message


def test_model_shape_and_dtype_mismatch(saved):
    path, _, _ = saved
    model = make_model(0)
    model[0] = nn.Linear(6, 9)
    expect_error(path, r"0.weight: saved shape \(8, 6\), model \(9, 6\)", model=model)
    model = make_model(0).double()
    expect_error(path, "0.weight: saved dtype torch.float32, model torch.float64", model=model)


def test_failed_load_changes_nothing(saved):
    path, _, _ = saved
    model = make_model(9)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt_before = optimizer.state_dict()
    expect_error(
        path,
        "holds AdamW optimizer state but the optimizer is SGD",
        model=model,
        optimizer=optimizer,
    )
    assert bitwise_equal(dict(model.state_dict()), before)  # checked before anything loaded
    assert bitwise_equal(optimizer.state_dict(), opt_before)


def test_optimizer_over_other_parameters(saved):
    path, _, _ = saved
    model = make_model(0)
    optimizer = make_optimizer(nn.Sequential(*list(model)[:2]))
    expect_error(
        path, r"parameter groups of sizes \[10\]; the optimizer's are \[4\]", optimizer=optimizer
    )


def _tamper(optimizer, change):
    if change == "exp_avg shape":
        first = optimizer.param_groups[0]["params"][0]
        optimizer.state[first]["exp_avg"] = torch.zeros(3)
    elif change == "empty step":
        first = optimizer.param_groups[0]["params"][0]
        optimizer.state[first]["step"] = torch.zeros(0)
    elif change == "lr string":
        optimizer.param_groups[0]["lr"] = "fast"
    elif change == "one beta":
        optimizer.param_groups[0]["betas"] = (0.9,)


@pytest.mark.parametrize("change, pattern", [
    ("exp_avg shape", r"state\[0\]\.exp_avg has shape \(3,\), its parameter \(8, 6\)"),
    ("empty step", r"state\[0\]\.step has 0 elements"),
    ("lr string", r"param_groups\[0\]\.lr is 'fast', not number"),
    ("one beta", r"param_groups\[0\]\.betas is \(0\.9,\), not 2 numbers"),
])
def test_optimizer_state_that_does_not_fit_is_refused(tmp_path, change, pattern):
    # torch's load_state_dict checks none of these; the fused AdamW step wrote past the end
    # of a short exp_avg (a crash), the others failed inside step()
    model, optimizer = trained_pair()
    _tamper(optimizer, change)
    path = save_checkpoint(tmp_path / "ck", model=model, optimizer=optimizer,
                           state={"epoch": 1})
    fresh = make_model(0)
    fresh_optimizer = make_optimizer(fresh)
    before = fresh_optimizer.state_dict()
    expect_error(path, pattern, model=fresh, optimizer=fresh_optimizer)
    assert bitwise_equal(fresh_optimizer.state_dict(), before)


def test_settings_that_may_be_none_load_as_torch_loads_them(tmp_path):
    # LBFGS's line_search_fn is None or a name: not a kind mismatch
    model = make_model(0)
    saved_optimizer = torch.optim.LBFGS(model.parameters(), line_search_fn="strong_wolfe")
    path = save_checkpoint(tmp_path / "ck", model=model, optimizer=saved_optimizer,
                           state={"epoch": 1})
    fresh = torch.optim.LBFGS(make_model(1).parameters())
    load_checkpoint(path, optimizer=fresh)
    assert fresh.param_groups[0]["line_search_fn"] == "strong_wolfe"


def test_optimizer_or_scheduler_missing_from_checkpoint(tmp_path):
    model, optimizer = trained_pair()
    save_checkpoint(tmp_path / "ck", model=model)
    expect_error(
        tmp_path / "ck", "holds no optimizer state; pass optimizer=None", optimizer=optimizer
    )
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, 2)
    expect_error(tmp_path / "ck", "holds no scheduler state", scheduler=scheduler)


@pytest.mark.parametrize(
    "state, pattern",
    [
        ({"config": {"fn": print}}, "state is not JSON-serializable"),
        ({"files": {}}, r"reserved key\(s\) \['files'\]"),
        ({"epoch": 1.5}, "'epoch' must be an int >= 0"),
        ({"config": []}, "'config' must be a dict"),
    ],
)
def test_bad_state_is_refused_before_writing(tmp_path, state, pattern):
    model, _ = trained_pair()
    with pytest.raises(CheckpointError, match=pattern):
        save_checkpoint(tmp_path / "ck", model=model, state=state)
    assert not (tmp_path / "ck").exists()


def test_a_state_too_large_to_load_is_refused_at_save(tmp_path, monkeypatch):
    from bnlab.checkpoint import runstate

    monkeypatch.setattr(runstate, "MAX_STATE_BYTES", 4096)  # (64 MiB in earnest)
    model, _ = trained_pair()
    with pytest.raises(CheckpointError, match="state.json: would be .* bytes, over the 4096"):
        save_checkpoint(tmp_path / "ck", model=model, state={"history": list(range(2000))})
    assert not (tmp_path / "ck").exists()


def _unstorable(kind):
    model = nn.Linear(2, 2)
    if kind == "reserved name":
        model.register_buffer("__metadata__", torch.zeros(1))
    elif kind == "sparse":
        model.register_buffer("s", torch.eye(2).to_sparse())
    elif kind == "lazy":
        model = nn.LazyLinear(2)
    elif kind == "complex128":
        model.register_buffer("c", torch.zeros(2, dtype=torch.complex128))
    return model


@pytest.mark.parametrize("kind, pattern", [
    ("reserved name", "'__metadata__' has the name safetensors reserves"),
    ("sparse", "'s' is a torch.sparse_coo tensor, which safetensors cannot store"),
    ("lazy", "'weight' is an uninitialized lazy parameter"),
    ("complex128", "cannot be encoded as safetensors"),
])
def test_unstorable_tensors_are_one_line_errors_at_save(tmp_path, kind, pattern):
    # (raw KeyError/RuntimeError/ValueError before, or a file that then failed to load)
    with pytest.raises(CheckpointError, match=pattern):
        save_checkpoint(tmp_path / "ck", model=_unstorable(kind))
    assert not (tmp_path / "ck").exists()


def test_numpy_scalar_settings_and_lazy_models_load_as_in_torch(tmp_path):
    import numpy as np

    model = nn.Sequential(nn.LazyLinear(3))
    model(torch.randn(2, 4))
    optimizer = torch.optim.AdamW(model.parameters(), lr=np.float32(1e-3))
    path = save_checkpoint(tmp_path / "ck", model=model, optimizer=optimizer)
    fresh = nn.Sequential(nn.LazyLinear(3))  # uninitialized: takes the saved shapes
    fresh_optimizer = torch.optim.AdamW(fresh.parameters(), lr=np.float32(1e-3))
    load_checkpoint(path, model=fresh, optimizer=fresh_optimizer)
    assert bitwise_equal(dict(fresh.state_dict()), dict(model.state_dict()))


def test_a_restore_that_fails_too_leaves_the_checkpoint_error_standing(tmp_path):
    class Expanded(nn.Module):  # torch cannot load into an expanded buffer
        def __init__(self):
            super().__init__()
            self.register_buffer("e", torch.randn(1, 3).expand(4, 3))

    path = save_checkpoint(tmp_path / "ck", model=Expanded())
    expect_error(path, "cannot be loaded into the model", model=Expanded())


def test_unstorable_optimizer_state(tmp_path):
    model, optimizer = trained_pair()
    optimizer.param_groups[0]["callback"] = print
    with pytest.raises(
        CheckpointError,
        match=r"optimizer state: cannot store a builtin_function_or_method at "
        r"param_groups.0.callback",
    ):
        save_checkpoint(tmp_path / "ck", model=model, optimizer=optimizer)


def test_error_is_one_line_and_pickles():
    error = CheckpointError("runs/x", "is broken\nbadly", "fix it")
    assert str(error) == "runs/x: is broken badly; fix it"
    assert str(pickle.loads(pickle.dumps(error))) == str(error)
    assert str(CheckpointError("plain message")) == "plain message"


def test_a_failed_load_part_way_puts_back_what_it_changed(tmp_path):
    model, optimizer = trained_pair()

    def scheduler_of(opt, parts):
        return torch.optim.lr_scheduler.SequentialLR(
            opt, [torch.optim.lr_scheduler.ConstantLR(opt) for _ in range(parts)],
            milestones=list(range(1, parts)))

    path = save_checkpoint(tmp_path / "ck", model=model, optimizer=optimizer,
                           scheduler=scheduler_of(optimizer, 3))
    fresh = make_model(9)
    fresh_opt = make_optimizer(fresh)
    scheduler = scheduler_of(fresh_opt, 2)  # the model and optimizer load, then this fails
    before = {k: v.clone() for k, v in fresh.state_dict().items()}
    opt_before, sched_before = fresh_opt.state_dict(), scheduler.state_dict()
    expect_error(path, "cannot be loaded into the scheduler", model=fresh, optimizer=fresh_opt,
                 scheduler=scheduler)
    assert bitwise_equal(dict(fresh.state_dict()), before)
    assert bitwise_equal(fresh_opt.state_dict(), opt_before)
    assert scheduler.state_dict() == sched_before


@pytest.mark.parametrize("name", ["state.json", "model.safetensors"])
def test_a_device_or_oversized_file_is_refused_without_reading_it(saved, name):
    path, _, _ = saved
    (path / name).unlink()
    (path / name).symlink_to("/dev/zero")  # endless: reading it whole would exhaust memory
    with pytest.raises(CheckpointError, match="not a regular file of at most|no state.json"):
        load_checkpoint(path)


def test_a_data_file_larger_than_its_manifest_is_refused(saved):
    path, _, _ = saved
    with open(path / "model.safetensors", "ab") as f:
        f.write(b"\0" * 100)
    expect_error(path, "model.safetensors: is not a regular file of at most")


def test_a_manifest_claiming_a_huge_file_is_refused_without_allocating_it(saved):
    path, _, _ = saved
    state = json.loads((path / "state.json").read_text())
    state["files"]["model.safetensors"]["bytes"] = 2**40  # read(2**40) raised MemoryError
    (path / "state.json").write_text(json.dumps(state))
    expect_error(path, "model.safetensors")


def test_deeply_nested_json_is_a_checkpoint_error(saved):
    path, _, _ = saved
    (path / "state.json").write_text("[" * 100_000 + "]" * 100_000)
    expect_error(path, "state.json: is not valid JSON")


def test_saving_through_a_symlink_replaces_what_it_names(tmp_path):
    model, optimizer = trained_pair()
    real = tmp_path / "real"
    save_checkpoint(real, model=model, state={"epoch": 1})
    link = tmp_path / "link"
    link.symlink_to(real)
    save_checkpoint(link, model=model, state={"epoch": 2})
    assert link.is_symlink() and read_checkpoint_state(real)["epoch"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link", "real"]


def test_rng_state_errors_name_no_file():
    from bnlab.checkpoint import restore_rng_state

    with pytest.raises(CheckpointError, match="^RNG state: missing") as info:
        restore_rng_state({})
    assert info.value.path is None


def test_a_directory_in_place_of_a_file_is_refused_without_leaking(saved):
    import os

    path, _, _ = saved
    (path / "model.safetensors").unlink()
    (path / "model.safetensors").mkdir()
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(3):
        expect_error(path, "model.safetensors: is not a regular file of at most")
    assert len(os.listdir("/proc/self/fd")) == before
