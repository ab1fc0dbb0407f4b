"""The curves' files: the format their suffix names, axes that suit a few epochs, and a
``$MPLBACKEND`` matplotlib rejects."""

import os
import subprocess
import sys

import pytest

from bnlab.experiment import plots
from bnlab.train import EpochRecord, History


def _history(*test_accs):
    return History([EpochRecord(epoch=i + 1, train_loss=0.5, train_acc=acc, test_loss=0.6,
                                test_acc=acc, seconds=1.0, samples_per_s=10.0,
                                peak_memory_bytes=0)
                    for i, acc in enumerate(test_accs)])


@pytest.mark.parametrize("suffix, opening", [(".png", b"\x89PNG"), (".pdf", b"%PDF"),
                                             (".svg", b"<?xml"), ("", b"\x89PNG")])
def test_the_suffix_names_the_format(tmp_path, suffix, opening):
    path = plots.plot_curves(_history(80.0, 85.0), tmp_path / f"curves{suffix}")
    assert path.read_bytes().startswith(opening)


def test_an_unknown_suffix_is_refused_before_writing(tmp_path):
    with pytest.raises(ValueError, match=r"matplotlib writes .*png.*svg"):
        plots.plot_overlay({"run": _history(80.0)}, tmp_path / "curves.docx")
    assert list(tmp_path.iterdir()) == []


def test_one_epoch_has_one_tick_and_no_negative_accuracy():
    fig, ax_loss, ax_acc = plots._figure()
    ax_acc.plot([1], [0.0], "o-")
    ax_loss.plot([1], [0.0], "o-")
    plots._tidy_axes(ax_loss, ax_acc, [1])
    assert list(ax_acc.get_xticks()) == [1] and list(ax_loss.get_xticks()) == [1]
    assert ax_acc.get_ylim()[0] == 0.0 and ax_loss.get_ylim()[0] == 0.0
    fig, ax_loss, ax_acc = plots._figure()
    ax_acc.plot([1, 2], [100.0, 100.0])
    plots._tidy_axes(ax_loss, ax_acc, [1, 2])
    assert ax_acc.get_ylim()[1] == 100.0


def test_a_backend_matplotlib_rejects_does_not_stop_the_plot(tmp_path):
    # Jupyter users export MPLBACKEND=inline, which matplotlib refuses at import outside
    # IPython: in a fresh interpreter, since matplotlib reads it once.
    script = ("import os, sys; from bnlab.experiment import plots; "
              "from tests.experiment.test_plots import _history; "
              "plots.plot_curves(_history(70.0), sys.argv[1]); "
              "assert os.environ['MPLBACKEND'] == 'inline'")
    env = dict(os.environ, MPLBACKEND="inline")
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path / "c.png")], env=env,
                          cwd=root, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "c.png").read_bytes().startswith(b"\x89PNG")
