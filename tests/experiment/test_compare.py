"""run_compare: three runs from one seed, one table, one plot."""

import pytest
import torch

from bnlab.experiment import RunError, TrainConfig, run_compare


def test_compare_runs_all_three_and_bn_variants_agree(tiny_data, tmp_path):
    cfg = TrainConfig(epochs=2, batch_size=32, data_dir=str(tiny_data), download=False,
                      device="cpu")
    results = run_compare(cfg, tmp_path / "cmp", progress=False)
    assert [r.config.norm for r in results] == ["none", "bnlab", "torch"]
    assert [r.parameters for r in results] == [44426, 44878, 44878]
    table = (tmp_path / "cmp" / "comparison.md").read_text().splitlines()
    assert len(table) == 5 and "LeNet + bnlab BN" in table[3] and "LeNet + torch BN" in table[4]
    assert (tmp_path / "cmp" / "compare.png").stat().st_size > 0
    bnlab_run, torch_run = results[1], results[2]
    for a, b in zip(bnlab_run.history, torch_run.history):  # same init, same data
        assert abs(a.train_loss - b.train_loss) < 1e-4
    for (key, a), b in zip(bnlab_run.model.state_dict().items(),
                           torch_run.model.state_dict().values()):
        if not key.endswith(("bias", "running_mean")):  # see tests/norm/test_notebook_lenet.py
            torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-3, msg=key)


def test_a_script_without_a_main_guard_can_compare(tiny_data, tmp_path):
    import os
    import subprocess
    import sys

    script = tmp_path / "experiment.py"  # run_compare at the top level, no __main__ guard
    script.write_text(
        "from bnlab.experiment import TrainConfig, run_compare\n"
        f"cfg = TrainConfig(epochs=1, batch_size=32, data_dir={str(tiny_data)!r}, "
        "download=False, device='cpu', max_steps=2)\n"
        f"results = run_compare(cfg, {str(tmp_path / 'cmp')!r}, norms=('none',), "
        "progress=False)\n"
        "print('runs:', len(results))\n")
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          env=os.environ, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("=== LeNet (no BN) ===") == 1 and "runs: 1" in done.stdout


def _never_trains(monkeypatch):
    from bnlab.experiment import compare

    def run(config, *args):
        raise AssertionError(f"the {config.norm} model trained before the check failed")

    monkeypatch.setattr(compare, "run_in_own_process", run)


@pytest.mark.parametrize("problem, message", [
    ("batch of one", "1 training sample"),
    ("run dir is a file", "is a file"),
    ("a run already there", "already holds a run"),
    ("output is a directory", "comparison.md is a directory"),
])
def test_what_would_stop_a_later_model_stops_the_comparison_first(tiny_data, tmp_path,
                                                                  monkeypatch, problem,
                                                                  message):
    _never_trains(monkeypatch)
    out = tmp_path / "cmp"
    out.mkdir()
    limit = None
    if problem == "batch of one":
        limit = 33  # batches of 32 and 1
    elif problem == "run dir is a file":
        (out / "torch").write_text("not a directory")
    elif problem == "a run already there":
        (out / "bnlab" / "checkpoint").mkdir(parents=True)
        (out / "bnlab" / "checkpoint" / "state.json").write_text("{}")
    else:
        (out / "comparison.md").mkdir()
    cfg = TrainConfig(epochs=1, batch_size=32, data_dir=str(tiny_data), download=False,
                      device="cpu", limit=limit)
    with pytest.raises(RunError, match=message):
        run_compare(cfg, out, progress=False)
    assert not (out / "none").exists()  # the first model did not train


def test_outputs_that_cannot_be_written_are_one_run_error(tiny_data, tmp_path, monkeypatch):
    from bnlab.experiment import compare
    from bnlab.train import EpochRecord, History

    history = History([EpochRecord(1, 0.5, 80.0, 0.6, 79.0, 1.0, 10.0, 0)])
    monkeypatch.setattr(compare, "run_in_own_process", lambda config, out, *a: compare.RunResult(
        config, history, None, out, 10, 0))

    def full(path, data):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(compare, "write_bytes_atomically", full)
    cfg = TrainConfig(epochs=1, batch_size=32, data_dir=str(tiny_data), download=False,
                      device="cpu")
    with pytest.raises(RunError, match="cannot write the comparison's outputs .* No space"):
        run_compare(cfg, tmp_path / "cmp", progress=False)
