"""run_compare: three runs from one seed, one table, one plot."""

import torch

from bnlab.experiment import TrainConfig, run_compare


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
