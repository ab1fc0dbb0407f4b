"""The CLI end to end on tiny data: train, compare, eval, inspect, and every bad value."""

import pickle
import subprocess
import sys

import pytest

from bnlab.cli import main

QUICK = ["--epochs", "1", "--batch-size", "32", "--device", "cpu", "--no-download",
         "--no-progress"]


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def trained(tiny_data, tmp_path, capsys):
    out = tmp_path / "run"
    code, stdout, _ = run(capsys, "train", "--data-dir", str(tiny_data), *QUICK, "--out",
                          str(out))
    assert code == 0, stdout
    return out, stdout


def test_train_prints_notebook_lines_and_summary(trained):
    out, stdout = trained
    assert "Epoch: 1, loss: " in stdout and "Epoch: 1, test loss: " in stdout
    assert "lenet norm=bnlab: final test acc" in stdout
    assert {p.name for p in out.iterdir()} >= {"metrics.csv", "metrics.json", "curves.png",
                                               "checkpoint"}


def test_eval_reproduces_the_last_test_accuracy(trained, capsys):
    out, stdout = trained
    code, ev, _ = run(capsys, "eval", str(out), "--device", "cpu", "--batch-size", "50")
    assert code == 0
    last_acc = float(stdout.split("test acc: ")[-1].split()[0])
    assert f"test acc {last_acc:.2f}%" in ev


def test_eval_says_how_many_images_and_the_runs_limit(tiny_data, tmp_path, capsys):
    out = tmp_path / "limited"
    code, stdout, _ = run(capsys, "train", "--data-dir", str(tiny_data), *QUICK,
                          "--limit", "64", "--out", str(out))
    assert code == 0, stdout
    last_acc = float(stdout.split("test acc: ")[-1].split()[0])
    code, ev, _ = run(capsys, "eval", str(out), "--device", "cpu")
    assert code == 0 and "test images)" in ev
    assert "trained and tested with --limit 64; pass --limit 64" in ev
    code, ev, _ = run(capsys, "eval", str(out), "--device", "cpu", "--limit", "64")
    assert code == 0 and "--limit" not in ev
    assert f"test acc {last_acc:.2f}% (64 test images)" in ev


def test_inspect_shows_each_bn_layer(trained, capsys):
    out, _ = trained
    code, text, _ = run(capsys, "inspect", str(out / "checkpoint"))
    assert code == 0
    for layer in ("layer 1: BatchNorm2d(6)", "layer 5: BatchNorm2d(16)",
                  "layer 10: BatchNorm1d(120)", "layer 13: BatchNorm1d(84)"):
        assert layer in text
    assert text.count("gamma") == 4 and text.count("running var") == 4


def test_eval_and_inspect_find_a_checkpoint_a_crash_left_aside(trained, capsys):
    out, _ = trained
    (out / "checkpoint").rename(out / ".checkpoint.old-00000000000000000001-1")
    for command in ("eval", "inspect"):
        code, text, err = run(capsys, command, str(out))
        assert code == 0 and "epoch 1" in text, err


@pytest.mark.parametrize("value", ["-1", "101", "2147483647"])  # (the last: out of memory)
def test_inspect_precision_is_bounded(trained, capsys, value):
    out, _ = trained
    with pytest.raises(SystemExit) as exc:
        main(["inspect", str(out), "--precision", value])
    assert exc.value.code == 2 and "--precision: must be in [0, 100]" in capsys.readouterr().err


def test_compare_prints_the_table(tiny_data, tmp_path, capsys):
    code, out, _ = run(capsys, "compare", "--data-dir", str(tiny_data), *QUICK, "--max-steps",
                       "3", "--out", str(tmp_path / "cmp"))
    assert code == 0
    assert "| model | final test acc (%) |" in out
    for label in ("LeNet (no BN)", "LeNet + bnlab BN", "LeNet + torch BN"):
        assert label in out


def test_help_shows_defaults(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["train", "--help"])
    assert exc.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for snippet in ("--epochs EPOCHS", "(default: 10)", "(default: 64)", "(default: adamw)",
                    "(default: 0.001)", "(default: 0.01)", "(default: auto)"):
        assert snippet in text


@pytest.mark.parametrize("argv, message", [
    (["train", "--epochs", "-1"], "--epochs: must be a positive integer up to 2147483647, got -1"),
    (["train", "--epochs", "ten"], "expected a positive integer, got 'ten'"),
    (["train", "--model", "vgg"], "argument --model: invalid choice: 'vgg'"),
    (["train", "--lr", "0"], "argument --lr: must be a positive finite number"),
        (["train", "--lr", "inf"], "argument --lr: must be a positive finite number"),
        (["train", "--weight-decay", "nan"], "argument --weight-decay: must be finite and >= 0"),
        (["train", "--data-dir", ""], "argument --data-dir: expected a path"),
    (["compare", "--batch-size", "0"], "must be a positive integer up to 2147483647, got 0"),
        (["train", "--seed", "-1"], "argument --seed: must be in [0, 2**63)"),
        (["train", "--batch-size", "100000000000000000000"], "argument --batch-size: must be"),
])
def test_bad_values_exit_2_with_one_line(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("command", ["train", "compare"])
def test_unknown_device_exits_2(command, capsys):
    with pytest.raises(SystemExit) as exc:
        main([command, "--device", "tpu"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "unknown device 'tpu'" in err
    assert len(err.strip().splitlines()) == 1


def test_missing_data_without_network_exits_2(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, err = run(capsys, "train", "--data-dir", str(empty), *QUICK, "--out",
                       str(tmp_path / "r"))
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert str(empty) in err


def test_unreadable_checkpoint_exits_2(tmp_path, capsys):
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "state.json").write_text("{not json")
    for target in (tmp_path / "missing", tmp_path / "junk"):
        code, _, err = run(capsys, "eval", str(target))
        assert code == 2 and len(err.strip().splitlines()) == 1, err


class Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_pickle_checkpoint_is_refused_and_never_runs(tmp_path, capsys):
    marker = tmp_path / "pwned"
    evil = tmp_path / "model.pt"
    evil.write_bytes(pickle.dumps(Payload(marker)))
    for command in ("eval", "inspect"):
        code, _, err = run(capsys, command, str(evil))
        assert code == 2 and "pickle" in err and len(err.strip().splitlines()) == 1
    assert not marker.exists()


def test_diverging_training_stops_with_epoch_and_batch(tiny_data, tmp_path, capsys):
    code, _, err = run(capsys, "train", "--data-dir", str(tiny_data), *QUICK, "--optimizer",
                       "sgd", "--lr", "1e30", "--out", str(tmp_path / "r"))
    assert code == 2 and "epoch 1" in err.lower() and "batch" in err.lower()


def test_python_dash_m_runs_the_cli_without_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "bnlab", "eval", str(tmp_path / "nope")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and "nope" in proc.stderr


def test_train_reports_where_the_data_came_from(trained, tiny_data):
    _, stdout = trained
    assert f"Fashion-MNIST from root ({tiny_data}): 256 training and 128 test images" in stdout


def test_eval_of_a_run_with_a_relative_data_dir_works_from_elsewhere(tiny_data, tmp_path,
                                                                      capsys, monkeypatch):
    monkeypatch.chdir(tiny_data.parent)
    code, _, err = run(capsys, "train", "--data-dir", tiny_data.name, *QUICK, "--out",
                       str(tmp_path / "run"))
    assert code == 0, err
    monkeypatch.chdir(tmp_path / "run")  # where tiny_data.name means nothing
    code, text, err = run(capsys, "eval", str(tmp_path / "run"), "--device", "cpu")
    assert code == 0 and "test acc" in text, err


def test_compare_reports_an_error_in_a_run_as_one_line(tiny_data, tmp_path, capsys):
    code, _, err = run(capsys, "compare", "--data-dir", str(tiny_data), *QUICK, "--optimizer",
                       "sgd", "--lr", "1e38", "--max-steps", "1", "--out", str(tmp_path / "c"))
    assert code == 2 and "non-finite" in err and len(err.strip().splitlines()) == 1
