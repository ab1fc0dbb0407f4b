"""``bnlab selfcheck``: bnlab's batch norm against torch's, with the kernels it ran on."""

import pytest

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


@pytest.mark.parametrize("argv, message", [
    (["--steps", "0"], "argument --steps: must be a positive integer"),
    (["--tol", "nan"], "argument --tol: must be finite and >= 0"),
    (["--tol", "-1"], "argument --tol: must be finite and >= 0"),
    (["--seed", "18446744073709551616"], "argument --seed: must be in [0, 2**63)"),
])
def test_bad_values_are_refused(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["selfcheck", *argv])
    assert exc.value.code == 2 and message in capsys.readouterr().err
