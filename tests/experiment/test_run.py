"""run_training: outputs, determinism, checkpoint resume, refusals."""

import csv
import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from tiny_fashion import write_tiny_fashion

from bnlab.checkpoint import read_checkpoint_state
from bnlab.experiment import RunError, TrainConfig, run_training
from bnlab.experiment import run as run_module


def config(tiny_data, **kwargs):
    base = dict(epochs=2, batch_size=32, data_dir=str(tiny_data), download=False, device="cpu")
    base.update(kwargs)
    return TrainConfig(**base)


def weights(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def assert_bitwise_equal(a, b):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_outputs_are_written_and_agree(tiny_data, tmp_path):
    result = run_training(config(tiny_data), tmp_path / "run", progress=False)
    out = tmp_path / "run"
    assert {p.name for p in out.iterdir()} >= {"metrics.csv", "metrics.json", "curves.png",
                                               "checkpoint"}
    doc = json.loads((out / "metrics.json").read_text())
    assert doc["config"]["norm"] == "bnlab"
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert len(rows) == len(doc["history"]["epochs"]) == 2
    for row, record in zip(rows, result.history):
        assert float(row["test_acc"]) == record.test_acc
    assert doc["summary"]["final_test_acc"] == result.history.final_test_acc
    assert read_checkpoint_state(out / "checkpoint")["epoch"] == 2
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "curves.png").stat().st_mode & 0o444 == 0o444  # readable, like the rest
    assert result.parameters == 44878


def test_same_seed_gives_bitwise_identical_runs(tiny_data, tmp_path):
    a = run_training(config(tiny_data), tmp_path / "a", progress=False)
    b = run_training(config(tiny_data), tmp_path / "b", progress=False)
    assert [r.metrics() for r in a.history] == [r.metrics() for r in b.history]
    assert_bitwise_equal(weights(a.model), weights(b.model))
    c = run_training(config(tiny_data, seed=1), tmp_path / "c", progress=False)
    assert [r.metrics() for r in c.history] != [r.metrics() for r in a.history]


def test_resume_after_an_interruption_ends_bitwise_identical(tiny_data, tmp_path, monkeypatch):
    full = run_training(config(tiny_data, epochs=3), tmp_path / "full", progress=False)

    real_write = run_module.write_metrics

    def crash_after_epoch_two(out_dir, cfg, history):
        real_write(out_dir, cfg, history)
        if len(history) == 2:
            raise KeyboardInterrupt  # the process dies after epoch 2's checkpoint

    monkeypatch.setattr(run_module, "write_metrics", crash_after_epoch_two)
    with pytest.raises(KeyboardInterrupt):
        run_training(config(tiny_data, epochs=3), tmp_path / "cut", progress=False)
    # the interrupted run still plotted its two completed epochs
    assert (tmp_path / "cut" / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    monkeypatch.setattr(run_module, "write_metrics", real_write)
    resumed = run_training(config(tiny_data, epochs=3), tmp_path / "cut", resume=True,
                           progress=False)
    assert resumed.resumed_from == 2
    assert [r.metrics() for r in resumed.history] == [r.metrics() for r in full.history]
    assert_bitwise_equal(weights(resumed.model), weights(full.model))


def test_resume_can_extend_a_finished_run(tiny_data, tmp_path):
    full = run_training(config(tiny_data, epochs=3), tmp_path / "full", progress=False)
    run_training(config(tiny_data, epochs=1), tmp_path / "grow", progress=False)
    grown = run_training(config(tiny_data, epochs=3), tmp_path / "grow", resume=True,
                         progress=False)
    assert_bitwise_equal(weights(grown.model), weights(full.model))


def test_existing_run_is_never_overwritten(tiny_data, tmp_path):
    run_training(config(tiny_data, epochs=1), tmp_path / "run", progress=False)
    before = (tmp_path / "run" / "checkpoint" / "model.safetensors").read_bytes()
    with pytest.raises(RunError, match="already holds a run; pass --resume"):
        run_training(config(tiny_data, epochs=1), tmp_path / "run", progress=False)
    assert (tmp_path / "run" / "checkpoint" / "model.safetensors").read_bytes() == before


def test_resume_refuses_different_settings(tiny_data, tmp_path):
    run_training(config(tiny_data, epochs=1), tmp_path / "run", progress=False)
    with pytest.raises(RunError, match="lr: 0.01 \\(checkpoint has 0.001\\)"):
        run_training(config(tiny_data, lr=0.01), tmp_path / "run", resume=True, progress=False)


def test_config_validation_names_every_problem():
    with pytest.raises(ValueError, match="unknown model 'vgg'.*epochs must be a positive"):
        TrainConfig(model="vgg", epochs=-1)
    with pytest.raises(ValueError, match="unknown optimizer"):
        replace(TrainConfig(), optimizer="lbfgs")
    # a hand-edited checkpoint config reaches these too: each type is checked
    with pytest.raises(ValueError, match=(
            "lr must be a number, got 'fast'; momentum must be in \\[0, 1\\), got 1.5; "
            "seed must be an integer, got 1.5; device must be a string, got 0; data_dir must "
            "be a path or None, got 5; download must be true or false, got 'yes'")):
        TrainConfig(lr="fast", momentum=1.5, seed=1.5, device=0, data_dir=5, download="yes")
    assert TrainConfig(data_dir=Path("/data")).data_dir == "/data"  # JSON-ready


def test_optimizer_is_the_configured_one_fused_where_torch_can():
    from bnlab.experiment import build_optimizer

    for name, cls in [("adamw", torch.optim.AdamW), ("adam", torch.optim.Adam),
                      ("sgd", torch.optim.SGD)]:
        opt = build_optimizer(TrainConfig(optimizer=name, lr=0.5, weight_decay=0.1),
                              [torch.nn.Parameter(torch.ones(3))])
        assert type(opt) is cls and opt.defaults["fused"] is True
        assert opt.defaults["lr"] == 0.5 and opt.defaults["weight_decay"] == 0.1
    sgd = build_optimizer(TrainConfig(optimizer="sgd", momentum=0.5),
                          [torch.nn.Parameter(torch.ones(3))])
    assert sgd.defaults["momentum"] == 0.5


def test_a_checkpoint_left_aside_by_a_crash_is_resumed_not_overwritten(tiny_data, tmp_path):
    run_training(config(tiny_data, epochs=1), tmp_path / "run", progress=False)
    ckpt = tmp_path / "run" / "checkpoint"
    ckpt.rename(tmp_path / "run" / ".checkpoint.old-00000000000000000001-1")  # mid-swap crash
    with pytest.raises(RunError, match="already holds a run"):
        run_training(config(tiny_data, epochs=1), tmp_path / "run", progress=False)
    resumed = run_training(config(tiny_data, epochs=2), tmp_path / "run", resume=True,
                           progress=False)
    assert resumed.resumed_from == 1 and read_checkpoint_state(ckpt)["epoch"] == 2


@pytest.mark.parametrize("edit, found", [
    ({"config": {"epochs": 0}}, "invalid run config"),
    ({"config": {"lr": "x"}}, "invalid run config"),
    ({"history": [{"epoch": 1}]}, "invalid run config or history"),
    ({"history": []}, "0 history rows for epoch 1"),
])
def test_a_hand_edited_state_json_is_refused_on_resume(tiny_data, tmp_path, edit, found):
    from bnlab.checkpoint import CheckpointError

    run_training(config(tiny_data, epochs=1), tmp_path / "run", progress=False)
    path = tmp_path / "run" / "checkpoint" / "state.json"
    state = json.loads(path.read_text())
    for key, value in edit.items():
        state[key] = state[key] | value if isinstance(value, dict) else value
    path.write_text(json.dumps(state))
    with pytest.raises(CheckpointError, match=found):
        run_training(config(tiny_data, epochs=2), tmp_path / "run", resume=True, progress=False)


def test_resume_refuses_another_process_layout(tiny_data, tmp_path, monkeypatch):
    run_training(config(tiny_data, epochs=1), tmp_path / "run", progress=False)
    state = read_checkpoint_state(tmp_path / "run" / "checkpoint")
    assert state["processes"] == {"world_size": 1, "sync_bn": False}
    monkeypatch.setenv("WORLD_SIZE", "2")  # refused before any process group is formed
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(RunError, match="trained with 1 process, this run has 2 processes, "
                                       "synchronized BN"):
        run_training(config(tiny_data, epochs=2), tmp_path / "run", resume=True,
                     progress=False)



@pytest.mark.parametrize("norm, limit, batch_size, max_steps, refused", [
    ("bnlab", 33, 32, None, True),   # the second batch holds one sample
    ("torch", 33, 32, None, True),
    ("none", 33, 32, None, False),   # no batch norm: nothing to refuse
    ("bnlab", 33, 32, 1, False),     # the one-sample batch is never reached
    ("bnlab", 64, 1, None, True),    # every batch holds one sample
])
def test_a_batch_of_one_sample_is_refused_before_training(tiny_data, tmp_path, norm, limit,
                                                          batch_size, max_steps, refused):
    cfg = config(tiny_data, norm=norm, limit=limit, batch_size=batch_size, epochs=1,
                 max_steps=max_steps)
    if not refused:
        run_training(cfg, tmp_path / "run", progress=False)
        return
    with pytest.raises(RunError, match="1 training sample .* batch norm cannot normalize"):
        run_training(cfg, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()  # refused before anything was written


def test_resume_refuses_fewer_epochs_than_completed(tiny_data, tmp_path):
    run_training(config(tiny_data, epochs=2), tmp_path / "run", progress=False)
    with pytest.raises(RunError, match="for --epochs 1: it has completed 2 epochs"):
        run_training(config(tiny_data, epochs=1), tmp_path / "run", resume=True,
                     progress=False)


def test_outputs_that_cannot_be_written_are_run_errors(tiny_data, tmp_path):
    (tmp_path / "afile").write_text("x")
    with pytest.raises(RunError, match="is a file"):
        run_training(config(tiny_data, epochs=1), tmp_path / "afile", progress=False)
    (tmp_path / "run" / "metrics.csv").mkdir(parents=True)  # a directory where a file goes
    with pytest.raises(RunError, match="cannot write the run's outputs"):
        run_training(config(tiny_data, epochs=1), tmp_path / "run", progress=False)


def test_a_non_finite_test_loss_stops_before_the_epoch_is_saved(tiny_data, tmp_path):
    from bnlab.train import NonFiniteLossError

    cfg = config(tiny_data, epochs=1, optimizer="sgd", lr=1e38, max_steps=1)
    with pytest.raises(NonFiniteLossError, match="non-finite test loss"):
        run_training(cfg, tmp_path / "run", progress=False)
    assert not (tmp_path / "run" / "checkpoint").exists()


def test_images_the_model_cannot_take_are_refused_before_training(tiny_data, tmp_path):
    other = write_tiny_fashion(tmp_path / "data32", n_train=64, n_test=32, size=32)
    with pytest.raises(RunError, match="cannot take this data's 32x32 images .*28x28"):
        run_training(config(tiny_data, data_dir=str(other)), tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()  # nothing written


def test_an_empty_checkpoint_directory_is_no_run_and_a_foreign_one_is_named(tiny_data,
                                                                           tmp_path):
    (tmp_path / "empty" / "checkpoint").mkdir(parents=True)
    result = run_training(config(tiny_data, epochs=1, max_steps=1), tmp_path / "empty",
                          progress=False)
    assert read_checkpoint_state(tmp_path / "empty" / "checkpoint")["epoch"] == 1
    assert len(result.history) == 1
    foreign = tmp_path / "foreign" / "checkpoint"
    foreign.mkdir(parents=True)
    (foreign / "notes.txt").write_text("mine")
    for resume in (False, True):
        with pytest.raises(RunError, match="holds files but no bnlab checkpoint .*move it away"):
            run_training(config(tiny_data, epochs=1), tmp_path / "foreign", resume=resume,
                         progress=False)
    assert (foreign / "notes.txt").read_text() == "mine"


def test_an_out_directory_that_cannot_be_written_fails_before_training(tiny_data, tmp_path,
                                                                        monkeypatch):
    import errno
    import tempfile

    def read_only(*args, **kwargs):  # as on a read-only file system (root ignores modes)
        raise OSError(errno.EROFS, "Read-only file system")

    trained = []
    monkeypatch.setattr(tempfile, "TemporaryFile", read_only)
    monkeypatch.setattr(run_module, "train_classify", lambda *a, **k: trained.append(1))
    with pytest.raises(RunError, match="cannot write the run's outputs in .*Read-only"):
        run_training(config(tiny_data, epochs=1), tmp_path / "run", progress=False)
    assert trained == []
