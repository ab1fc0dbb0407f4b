"""``bnlab selfcheck``: bnlab's batch norm against torch's, with the kernels it ran on."""

from bnlab.cli import selfcheck
from bnlab.cli.main import main
from bnlab.norm.kernels import kernel_status


def test_passes_and_says_which_kernels_ran(capsys):
    assert main(["selfcheck", "--steps", "2"]) == 0
    out = capsys.readouterr().out
    assert f"bnlab kernels: {kernel_status()}" in out
    assert out.count("| BatchNorm") == len(selfcheck.CASES)
    assert "OK: bnlab matches torch.nn.BatchNorm" in out


def test_a_difference_over_the_tolerance_fails(capsys):
    assert main(["selfcheck", "--steps", "1", "--tol", "0"]) == 1
    assert "FAILED: bnlab differs from torch" in capsys.readouterr().out


def test_steps_below_one_are_refused(capsys):
    assert main(["selfcheck", "--steps", "0"]) == 2
    assert "--steps must be at least 1, got 0" in capsys.readouterr().err
