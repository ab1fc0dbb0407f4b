"""``bnlab train`` with several processes, end to end on a tiny IDX dataset: the local
launcher and torchrun run the same training as one process on the global batch, resume works
on every rank, only rank 0 talks and writes, and a rank that dies or hangs ends the run
with an error in bounded time."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from dist_harness import child_env, run_command
from tiny_fashion import write_tiny_fashion

from bnlab.checkpoint import load_checkpoint
from bnlab.experiment import TrainConfig, run_training
from bnlab.models import build_model

# SGD: Adam would turn the rounding noise in the (zero) gradients of the biases in front of
# BN into full-size steps, so runs equal up to rounding would drift apart.
COMMON = ["--batch-size", "16", "--device", "cpu", "--no-download", "--no-progress",
          "--max-steps", "3", "--seed", "1", "--optimizer", "sgd", "--lr", "0.05"]
LAUNCH_TIMEOUT_S = 90


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    data = write_tiny_fashion(root / "data", n_train=128, n_test=48)
    return root, child_env(root), ["--data-dir", str(data), *COMMON]


def bnlab(setup, *args: str) -> tuple[int, str, str]:
    root, env, common = setup
    done = run_command([sys.executable, "-m", "bnlab", "train", *common, *args], env, root,
                       LAUNCH_TIMEOUT_S)
    return done.returncode, done.stdout, done.stderr


def weights(run: Path) -> dict[str, torch.Tensor]:
    model = build_model("lenet", "bnlab")
    load_checkpoint(run / "checkpoint", model=model)
    return model.state_dict()


def history(run: Path) -> list[dict]:
    return json.loads((run / "metrics.json").read_text())["history"]["epochs"]


def test_torchrun_then_nproc_resume_equals_one_process_on_the_global_batch(setup, monkeypatch):
    root, env, common = setup
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                "--nproc_per_node", "2", "-m", "bnlab", "train", *common, "--epochs", "1",
                "--out", str(root / "a")]
    done = run_command(torchrun, env, root, LAUNCH_TIMEOUT_S)
    assert done.returncode == 0, done.stderr
    for line in ("Epoch: 1, loss: ", "Epoch: 1, test loss: ", "final test acc"):
        assert done.stdout.count(line) == 1, line  # rank 0 only
    code, second, err = bnlab(setup, "--nproc", "2", "--epochs", "2", "--resume", "--out",
                              str(root / "a"))
    assert code == 0, err
    assert second.count("Resuming") == 1 and second.count("Epoch: 2, test loss: ") == 1

    # The reference: one process, global batch 2 x 16, both epochs in one go.
    monkeypatch.setenv("XDG_CACHE_HOME", env["XDG_CACHE_HOME"])
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    config = TrainConfig(epochs=2, batch_size=32, optimizer="sgd", lr=0.05, seed=1,
                         device="cpu", data_dir=str(root / "data"), download=False, max_steps=3)
    single = run_training(config, root / "single", progress=False)
    straight = history(root / "single")
    resumed = history(root / "a")
    assert len(resumed) == len(straight) == 2
    for got, want in zip(resumed, straight):
        for key in ("train_loss", "train_acc", "test_loss", "test_acc"):
            assert got[key] == pytest.approx(want[key], rel=1e-5, abs=1e-5), key
    got = weights(root / "a")
    for key, want in single.model.state_dict().items():
        torch.testing.assert_close(got[key], want, rtol=1e-5, atol=1e-5, msg=key)


@pytest.mark.parametrize("fault", ["die", "hang"])
def test_a_dead_or_hung_rank_ends_the_run_with_an_error(setup, fault):
    root, env, common = setup
    marker = root / f"{fault}-reached"
    argv = [*common, "--epochs", "1", "--dist-timeout", "6", "--out", str(root / fault)]
    script = ("import sys; from bnlab.distributed import spawn_local; "
              "from dist_workers import faulty_train; "
              f"sys.exit(spawn_local(2, faulty_train, ({fault!r}, {str(marker)!r}, {argv!r})))")
    done = run_command([sys.executable, "-c", script], env, root, LAUNCH_TIMEOUT_S)
    assert marker.exists(), done.stderr  # rank 1 failed mid-training, not at start-up
    assert done.returncode != 0, done.stdout
    assert "the others were stopped" in done.stderr
    if fault == "hang":  # rank 0 gave up waiting: its collective timed out
        assert done.returncode == 1
        assert "timed out" in done.stderr.lower() or "timeout" in done.stderr.lower()
    assert not (root / fault / "checkpoint").exists()


def test_settings_errors_are_one_line_before_any_process_starts(setup, capsys):
    from bnlab.cli import main

    root, _, common = setup
    (root / "afile").write_text("")
    code = main(["train", *common, "--nproc", "2", "--out", str(root / "afile")])
    err = capsys.readouterr().err
    assert code == 2
    assert err.strip() == (f"bnlab train: error: --out {root / 'afile'} is a file; name a "
                           "directory for the run's outputs")  # not one line per process


@pytest.mark.parametrize("args, message", [
    (["--limit", "20"], "make no global batch of 32"),
    (["--batch-size", "1", "--no-sync-bn"], "would hold 1 training sample"),
    (["--out", "/proc/bnlab-cannot-write-here"], "cannot write the run's outputs"),
])
def test_what_every_process_would_refuse_is_refused_before_they_start(setup, capsys,
                                                                      monkeypatch, args,
                                                                      message):
    from bnlab.cli import main, train_parallel

    def never(*_args, **_kwargs):
        raise AssertionError("processes were started")

    monkeypatch.setattr(train_parallel, "spawn_local", never)
    root, _, common = setup
    out = [] if "--out" in args else ["--out", str(root / "refused")]
    code = main(["train", *common, "--nproc", "2", *out, *args])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and message in err[0], err
