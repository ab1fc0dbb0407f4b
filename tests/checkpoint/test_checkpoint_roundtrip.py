"""save -> load reproduces model, optimizer, scheduler, run state and RNG bit for bit."""

import collections
import json
import math
import os
import subprocess
import sys
import warnings
from pathlib import Path

import torch
from checkpoint_helpers import (
    bitwise_equal,
    make_model,
    make_optimizer,
    train_steps,
    trained_pair,
)
from safetensors import safe_open
from torch import nn

from bnlab.checkpoint import (
    capture_rng_state,
    load_checkpoint,
    read_checkpoint_state,
    restore_rng_state,
    save_checkpoint,
)


def resumed_vs_uninterrupted(tmp_path, restore_rng: bool):
    torch.manual_seed(123)
    model = make_model(0)
    optimizer = make_optimizer(model)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=2, gamma=0.5)
    train_steps(model, optimizer, 4, scheduler)
    save_checkpoint(
        tmp_path / "ck", model=model, optimizer=optimizer, scheduler=scheduler, state={"epoch": 1}
    )
    train_steps(model, optimizer, 5, scheduler)  # the uninterrupted run

    torch.manual_seed(999)  # a different process state before resuming
    resumed = make_model(7)
    resumed_opt = make_optimizer(resumed, lr=0.5)
    resumed_sched = torch.optim.lr_scheduler.StepLR(resumed_opt, step_size=3, gamma=0.1)
    ckpt = load_checkpoint(
        tmp_path / "ck", model=resumed, optimizer=resumed_opt, scheduler=resumed_sched
    )
    if restore_rng:
        restore_rng_state(ckpt.state["rng"])
    train_steps(resumed, resumed_opt, 5, resumed_sched)
    return (model, optimizer, scheduler), (resumed, resumed_opt, resumed_sched)


def test_training_resumed_from_a_checkpoint_equals_uninterrupted_training(tmp_path):
    (m, o, s), (m2, o2, s2) = resumed_vs_uninterrupted(tmp_path, restore_rng=True)
    assert bitwise_equal(m.state_dict(), m2.state_dict())
    assert bitwise_equal(o.state_dict(), o2.state_dict())
    assert bitwise_equal(s.state_dict(), s2.state_dict())


def test_resume_without_the_rng_state_diverges(tmp_path):
    # the comparison above can fail: data and dropout come from the global RNG
    (m, _, _), (m2, _, _) = resumed_vs_uninterrupted(tmp_path, restore_rng=False)
    assert not bitwise_equal(m.state_dict(), m2.state_dict())


def test_loaded_states_equal_the_saved_ones(tmp_path):
    model, optimizer = trained_pair()
    save_checkpoint(tmp_path / "ck", model=model, optimizer=optimizer)
    ckpt = load_checkpoint(tmp_path / "ck")
    assert bitwise_equal(ckpt.model_state, dict(model.state_dict()))
    assert bitwise_equal(ckpt.optimizer_state, optimizer.state_dict())
    assert ckpt.scheduler_state is None
    assert ckpt.path == tmp_path / "ck"
    assert all(t.device.type == "cpu" for t in ckpt.model_state.values())


def test_optimizer_file_layout(tmp_path):
    model, optimizer = trained_pair()
    save_checkpoint(tmp_path / "ck", model=model, optimizer=optimizer)
    with safe_open(tmp_path / "ck" / "optimizer.safetensors", framework="pt") as f:
        keys, metadata = set(f.keys()), f.metadata()
        exp_avg = f.get_tensor("state.0.exp_avg")
    n = len(list(model.parameters()))
    assert keys == {
        f"state.{i}.{name}" for i in range(n) for name in ("step", "exp_avg", "exp_avg_sq")
    }
    assert torch.equal(exp_avg, optimizer.state[next(model.parameters())]["exp_avg"])
    assert metadata["class"] == "AdamW"
    assert "0.01" in metadata["tree"] and "param_groups" in metadata["tree"]


def test_non_tensor_optimizer_state_round_trips(tmp_path):
    # LBFGS keeps ints, floats and lists of tensors in its state
    torch.manual_seed(0)
    model = nn.Linear(4, 2)
    optimizer = torch.optim.LBFGS(model.parameters(), lr=0.5, history_size=3)
    x, y = torch.randn(8, 4), torch.randn(8, 2)

    def closure():
        optimizer.zero_grad()
        loss = ((model(x) - y) ** 2).mean()
        loss.backward()
        return loss

    for _ in range(2):
        optimizer.step(closure)
    state = optimizer.state_dict()["state"][0]
    assert isinstance(state["func_evals"], int) and isinstance(state["old_dirs"], list)
    save_checkpoint(tmp_path / "ck", model=model, optimizer=optimizer)

    fresh = nn.Linear(4, 2)
    fresh_opt = torch.optim.LBFGS(fresh.parameters(), lr=0.1, history_size=3)
    load_checkpoint(tmp_path / "ck", model=fresh, optimizer=fresh_opt)
    assert bitwise_equal(fresh_opt.state_dict(), optimizer.state_dict())


def test_python_float_step_survives(tmp_path):
    model, optimizer = trained_pair()
    for state in optimizer.state.values():
        state["step"] = float(state["step"])  # older torch kept step as a Python float
    save_checkpoint(tmp_path / "ck", model=model, optimizer=optimizer)
    ckpt = load_checkpoint(tmp_path / "ck")
    assert bitwise_equal(ckpt.optimizer_state, optimizer.state_dict())
    assert isinstance(ckpt.optimizer_state["state"][0]["step"], float)


class Tied(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(4, 4)
        self.b = nn.Linear(4, 4)
        self.b.weight = self.a.weight  # shared storage under two keys
        self.register_buffer("view", torch.arange(12.0).reshape(3, 4).t())  # non-contiguous


def test_shared_and_non_contiguous_tensors(tmp_path):
    torch.manual_seed(0)
    model = Tied()
    assert not model.view.is_contiguous()
    save_checkpoint(tmp_path / "ck", model=model)
    torch.manual_seed(1)
    fresh = Tied()
    ckpt = load_checkpoint(tmp_path / "ck", model=fresh)
    assert bitwise_equal(dict(fresh.state_dict()), dict(model.state_dict()))
    assert fresh.a.weight is fresh.b.weight  # loading copies into the module's own tensors
    assert torch.equal(ckpt.model_state["view"], torch.arange(12.0).reshape(3, 4).t())


def test_run_state_round_trips_through_json(tmp_path):
    model, _ = trained_pair()
    history = [{"epoch": 1, "train_loss": 0.1 + 0.2, "test_acc": 0.875}, {"loss": math.nan}]
    state = {
        "epoch": 2,
        "config": {"lr": 1e-3, "betas": (0.9, 0.999), "name": "run é"},
        "history": history,
        "best": -0.0,
    }
    save_checkpoint(tmp_path / "ck", model=model, state=state)
    run = read_checkpoint_state(tmp_path / "ck")
    assert (run["format"], run["version"], run["epoch"]) == ("bnlab-checkpoint", 1, 2)
    assert run["config"] == {"lr": 1e-3, "betas": [0.9, 0.999], "name": "run é"}  # JSON lists
    assert bitwise_equal(run["history"], history) and bitwise_equal(run["best"], -0.0)
    assert set(run["files"]) == {"model.safetensors"}
    assert bitwise_equal(load_checkpoint(tmp_path / "ck").state, run)


def test_defaults_and_the_rng_captured_at_save(tmp_path):
    model, _ = trained_pair()
    torch.manual_seed(5)
    expected = capture_rng_state()
    save_checkpoint(tmp_path / "ck", model=model)
    run = read_checkpoint_state(tmp_path / "ck")
    assert (run["epoch"], run["config"], run["history"]) == (0, {}, [])
    assert run["rng"] == json.loads(json.dumps(expected))


def test_given_rng_state_is_stored_as_given(tmp_path):
    model, _ = trained_pair()
    torch.manual_seed(5)
    rng = capture_rng_state()
    torch.rand(10)  # move on after capturing
    save_checkpoint(tmp_path / "ck", model=model, state={"rng": rng})
    restore_rng_state(read_checkpoint_state(tmp_path / "ck")["rng"])
    drawn = torch.rand(3)
    torch.manual_seed(5)
    assert torch.equal(drawn, torch.rand(3))


def test_saving_again_replaces_the_checkpoint(tmp_path):
    model, optimizer = trained_pair()
    save_checkpoint(tmp_path / "ck", model=model, optimizer=optimizer, state={"epoch": 1})
    train_steps(model, optimizer, 1)
    path = save_checkpoint(tmp_path / "ck", model=model, state={"epoch": 2})
    assert path == tmp_path / "ck"
    ckpt = load_checkpoint(path)
    assert ckpt.state["epoch"] == 2 and ckpt.optimizer_state is None
    assert bitwise_equal(ckpt.model_state, dict(model.state_dict()))
    assert sorted(p.name for p in path.iterdir()) == ["model.safetensors", "state.json"]
    assert [p.name for p in tmp_path.iterdir()] == ["ck"]


def test_multistep_milestones_come_back_as_a_counter(tmp_path):
    model, optimizer = trained_pair()
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=[2, 4], gamma=0.5)
    save_checkpoint(tmp_path / "ck", model=model, optimizer=optimizer, scheduler=scheduler)
    other = torch.optim.lr_scheduler.MultiStepLR(make_optimizer(make_model(1)), milestones=[9])
    load_checkpoint(tmp_path / "ck", scheduler=other)
    assert type(other.milestones) is collections.Counter and other.milestones == {2: 1, 4: 1}
    with warnings.catch_warnings():  # step(epoch) is deprecated, and uses Counter.elements()
        warnings.simplefilter("ignore")
        other.step(3)
    assert other.get_last_lr() == [lr * 0.5 for lr in scheduler.base_lrs]  # one milestone passed


def test_the_same_state_gives_the_same_bytes_in_every_process(tmp_path):
    # safetensors orders its header by per-process hash seeds: the files are canonicalized
    script = (
        "import sys, torch\n"
        "from pathlib import Path\n"
        "from checkpoint_helpers import trained_pair\n"
        "from bnlab.checkpoint import save_checkpoint\n"
        "model, optimizer = trained_pair()\n"
        "save_checkpoint(Path(sys.argv[1]), model=model, optimizer=optimizer,\n"
        "                state={'epoch': 1, 'rng': {}})\n"
    )
    helpers = str(Path(__file__).parent)
    for name in ("a", "b"):
        subprocess.run([sys.executable, "-c", script, str(tmp_path / name)], check=True,
                       env={**os.environ, "PYTHONPATH": helpers})
    for file in ("model.safetensors", "optimizer.safetensors"):
        assert (tmp_path / "a" / file).read_bytes() == (tmp_path / "b" / file).read_bytes()
