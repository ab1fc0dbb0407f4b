"""Training curves as image files, PNG unless the file's suffix names another format
matplotlib writes (pdf, svg, ...); matplotlib's object API: no pyplot, no global backend."""

from __future__ import annotations

import io
import os
import sys
from collections.abc import Mapping
from pathlib import Path

from ..atomic_files import write_bytes_atomically
from ..train import History

__all__ = ["plot_curves", "plot_overlay"]


def _import_matplotlib() -> None:
    """Import matplotlib even where ``$MPLBACKEND`` names a backend it rejects (Jupyter
    users set "inline", valid only inside IPython): a bare Figure needs no backend."""
    try:
        import matplotlib  # noqa: F401
    except ValueError:  # rcParams' validation of $MPLBACKEND, at import
        backend = os.environ.pop("MPLBACKEND", None)
        if backend is None:
            raise
        # The failed import left submodules behind that refer to the half-made package.
        for name in [m for m in sys.modules if m.split(".")[0] == "matplotlib"]:
            del sys.modules[name]
        try:
            import matplotlib  # noqa: F401, F811
        finally:
            os.environ["MPLBACKEND"] = backend


def _figure():
    # A bare Figure renders with Agg (or the format's own canvas) and never touches
    # pyplot's global state (the user's notebook backend), and skips pyplot's import
    # (~0.4 s).
    _import_matplotlib()
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(11, 4))
    ax_loss, ax_acc = fig.subplots(1, 2)
    ax_loss.set(xlabel="epoch", ylabel="loss (mean per sample)", title="Loss")
    ax_acc.set(xlabel="epoch", ylabel="accuracy (%)", title="Accuracy")
    for ax in (ax_loss, ax_acc):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs, not 1.2, 1.4, ...
    return fig, ax_loss, ax_acc


def _check_epochs(history: History, name: str) -> None:
    if not len(history):
        raise ValueError(f"{name}: a history without epochs has nothing to plot")


def _tidy_axes(ax_loss, ax_acc, epochs: list[int]) -> None:
    """Ticks at the epochs themselves when there are few (one epoch gave 0.95, 1.00, 1.05);
    no loss below 0 nor accuracy outside 0-100 on the axes."""
    if len(epochs) <= 12:
        for ax in (ax_loss, ax_acc):
            ax.set_xticks(epochs)
    low, high = ax_loss.get_ylim()
    ax_loss.set_ylim(max(low, 0.0), high)
    low, high = ax_acc.get_ylim()
    ax_acc.set_ylim(max(low, 0.0), min(high, 100.0))


def _format(fig, path: Path) -> str:
    """The image format ``path``'s suffix names (PNG without one); ValueError for others."""
    name = path.suffix[1:].lower() or "png"
    supported = fig.canvas.get_supported_filetypes()
    if name not in supported:
        raise ValueError(f"cannot plot to {path}: matplotlib writes {', '.join(sorted(supported))}"
                         " files (name one of those suffixes)")
    return name


def _save(fig, path: Path) -> Path:
    """Write atomically: a half-written image never replaces a good one."""
    image_format = _format(fig, path)
    path.parent.mkdir(parents=True, exist_ok=True)
    png = io.BytesIO()
    # Fixed margins for this fixed figure size: tight_layout measured every text's extent
    # first (~0.2 s of a one-epoch run).
    fig.subplots_adjust(left=0.065, right=0.985, bottom=0.125,
                        top=0.86 if fig.get_suptitle() else 0.92, wspace=0.2)
    fig.savefig(png, format=image_format, dpi=110)
    write_bytes_atomically(path, png.getvalue())
    return path


def plot_curves(history: History, path: str | os.PathLike[str], title: str = "") -> Path:
    """Train/test loss and accuracy per epoch of one run, side by side; ValueError for a
    history without epochs."""
    _check_epochs(history, "plot_curves")
    fig, ax_loss, ax_acc = _figure()
    epochs = history.epochs
    ax_loss.plot(epochs, history.column("train_loss"), "o-", label="train")
    ax_loss.plot(epochs, history.column("test_loss"), "s--", label="test")
    ax_acc.plot(epochs, history.column("train_acc"), "o-", label="train")
    ax_acc.plot(epochs, history.column("test_acc"), "s--", label="test")
    for ax in (ax_loss, ax_acc):
        ax.legend()
        ax.grid(alpha=0.3)
    _tidy_axes(ax_loss, ax_acc, list(epochs))
    if title:
        fig.suptitle(title)
    return _save(fig, Path(path))


def plot_overlay(histories: Mapping[str, History], path: str | os.PathLike[str]) -> Path:
    """Several runs on one figure: train loss and test accuracy per epoch, one line each;
    ValueError without runs or for a run without epochs."""
    if not histories:
        raise ValueError("plot_overlay: no runs to plot")
    for name, history in histories.items():
        _check_epochs(history, f"plot_overlay ({name})")
    fig, ax_loss, ax_acc = _figure()
    ax_loss.set_title("Training loss")
    ax_acc.set_title("Test accuracy")
    for name, history in histories.items():
        (line,) = ax_loss.plot(history.epochs, history.column("train_loss"), "o-", label=name)
        ax_acc.plot(history.epochs, history.column("test_acc"), "o-", color=line.get_color(),
                    label=name)
    for ax in (ax_loss, ax_acc):
        ax.legend()
        ax.grid(alpha=0.3)
    _tidy_axes(ax_loss, ax_acc, sorted({e for h in histories.values() for e in h.epochs}))
    return _save(fig, Path(path))
