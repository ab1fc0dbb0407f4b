"""What a run checks before it trains: where it resumes from (a checkpoint that matches its
settings and process layout, and is intact), and that its batches suit batch norm."""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..checkpoint import CheckpointError, checkpoint_exists, read_checkpoint_state
from ..checkpoint.runstate import STATE_FILE
from ..data import load_data_fashion_mnist
from ..data.loader import TensorLoader
from ..distributed import WorldInfo
from ..models import build_model
from ..norm import is_batch_norm
from ..train import History
from .config import TrainConfig
from .errors import RunError
from .parallel import check_global_batch, rank_device

__all__ = ["CHECKPOINT_DIR", "check_batches_normalizable", "check_launch",
           "check_model_takes_images", "check_models_take_data", "check_out_dir",
           "check_writable", "processes_record", "resume_point", "writing"]

CHECKPOINT_DIR = "checkpoint"  # in a run's --out directory


def check_batches_normalizable(model: nn.Module, loader: TensorLoader, max_steps: int | None,
                               synchronized: bool) -> None:
    """RunError, before any training, when an epoch would hand ``model``'s batch-norm
    layers a batch of one sample (one value per channel: no variance to normalize by).
    ``synchronized``: the statistics gather every process's batch (never one sample)."""
    if synchronized or not any(is_batch_norm(m) for m in model.modules()):
        return
    sizes = [len(batch) for batch in loader.batch_indices(0)]
    if max_steps is not None:
        sizes = sizes[:max_steps]
    if 1 in sizes:
        raise RunError(
            f"batch {sizes.index(1) + 1} of each epoch would hold 1 training sample "
            f"({len(loader.labels)} samples, --batch-size {loader.batch_size}), and batch "
            "norm cannot normalize one value per channel in training: change --batch-size "
            "or --limit")


def check_model_takes_images(model: nn.Module, model_name: str, loader: TensorLoader) -> None:
    """RunError, before any training, when ``model`` (on the loader's device) cannot take the
    loader's images (custom IDX files of another size than the model was built for). One
    sample in eval mode without gradients: no parameter, buffer or RNG state changes."""
    X, _ = loader.batch(torch.zeros(1, dtype=torch.int64, device=loader.device))
    was_training = model.training
    try:
        with torch.no_grad():
            model.eval()(X)
    except (RuntimeError, ValueError) as err:  # (ValueError: e.g. too small to pool)
        first_line = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise RunError(
            f"the model {model_name} cannot take this data's {X.shape[-2]}x{X.shape[-1]} "
            f"images ({first_line}); bnlab's LeNets take 28x28 images, Fashion-MNIST's size"
        ) from None
    finally:
        model.train(was_training)


def check_out_dir(config: TrainConfig, out: Path, resume: bool,
                  processes: dict[str, Any]) -> dict[str, Any] | None:
    """Before anything runs: RunError when ``out`` is a file, and :func:`resume_point` of
    its checkpoint (the run state to resume from, None for a fresh run)."""
    if out.exists() and not out.is_dir():
        raise RunError(f"--out {out} is a file; name a directory for the run's outputs")
    return resume_point(config, out / CHECKPOINT_DIR, resume, processes)


def processes_record(world_size: int, sync_bn: bool) -> dict[str, Any]:
    """How a run is spread over processes, recorded in its checkpoint: the global batch and
    the BN statistics depend on it, so a resume must match it."""
    return {"world_size": world_size, "sync_bn": bool(sync_bn and world_size > 1)}


def _describe(processes: dict[str, Any]) -> str:
    n = processes["world_size"]
    if n == 1:
        return "1 process"
    return f"{n} processes, {'synchronized' if processes['sync_bn'] else 'per-process'} BN"


def resume_point(config: TrainConfig, ckpt_dir: Path, resume: bool,
                  processes: dict[str, Any]) -> dict[str, Any] | None:
    """The checkpoint's run state when resuming, None for a fresh run."""
    has_checkpoint = checkpoint_exists(ckpt_dir)  # or the copy a crash mid-save left aside
    if ckpt_dir.is_dir() and not (ckpt_dir / STATE_FILE).exists():
        if not any(ckpt_dir.iterdir()):
            has_checkpoint = False  # an empty directory: the first save replaces it
        else:
            raise RunError(f"{ckpt_dir} holds files but no bnlab checkpoint (no {STATE_FILE})"
                           f": move it away or choose another --out")
    if not resume:
        if has_checkpoint:
            raise RunError(f"{ckpt_dir.parent} already holds a run; pass --resume to continue "
                           "it or choose another --out")
        return None
    if not has_checkpoint:
        return None
    state = read_checkpoint_state(ckpt_dir)
    try:  # state.json is checksummed by nothing: a hand edit must fail here, clearly
        saved = TrainConfig.from_dict(state.get("config", {}))
        history = History.from_dict({"epochs": state["history"]})
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(ckpt_dir / "state.json", f"holds an invalid run config or "
                              f"history ({type(err).__name__}: {err})",
                              "use an earlier checkpoint or train again") from None
    if state["epoch"] > config.epochs:
        raise RunError(f"cannot resume {ckpt_dir} for --epochs {config.epochs}: it has "
                       f"completed {state['epoch']} epochs already")
    if len(history) != state["epoch"]:
        raise CheckpointError(ckpt_dir / "state.json",
                              f"has {len(history)} history rows for epoch "
                              f"{state['epoch']}", "use an earlier checkpoint or train again")
    if diff := saved.mismatches(config):
        raise RunError(f"cannot resume {ckpt_dir}: settings differ from the checkpoint's: "
                       + "; ".join(diff))
    saved_processes = state.get("processes", processes)  # absent in older checkpoints
    if saved_processes != processes:
        try:
            then = _describe(saved_processes)
        except (KeyError, TypeError):
            then = repr(saved_processes)
        raise RunError(f"cannot resume {ckpt_dir}: it was trained with {then}, this run has "
                       f"{_describe(processes)} (--nproc/torchrun, --no-sync-bn); "
                       "the global batch and BN statistics would change")
    return state


def writing(out: Path, write: Callable[[], object]) -> None:
    """``write()``, an OSError (disk full, a directory where a file goes) as a RunError."""
    try:
        write()
    except OSError as err:
        raise RunError(f"cannot write the run's outputs in {out}: {err}") from None


def check_writable(out: Path) -> None:
    """Create ``out`` and write (and remove) a file in it: a read-only directory or file
    system fails here (OSError), not after the first epoch's training."""
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryFile(dir=out):
        pass


def check_models_take_data(config: TrainConfig, norms: Sequence[str], world_size: int = 1,
                           synchronized: bool = False) -> TensorLoader:
    """Load (on first use download and cache) ``config``'s training data as rank 0 of
    ``world_size`` processes gets it, and check it against the model with each norm in
    ``norms``: no batch of one sample for its batch norm, images it takes. Returns that
    rank's training loader."""
    loader, _ = load_data_fashion_mnist(config.batch_size, root=config.data_dir,
                                        download=config.download, limit=config.limit,
                                        seed=config.seed, world_size=world_size,
                                        drop_last=world_size > 1)
    for norm in norms:
        model = build_model(config.model, norm)
        check_batches_normalizable(model, loader, config.max_steps, synchronized)
        check_model_takes_images(model, config.model, loader)
    return loader


def check_launch(config: TrainConfig, out: Path, resume: bool, nproc: int,
                 sync_bn: bool) -> None:
    """Before ``nproc`` processes start (``bnlab train --nproc``): what each would check
    once running, checked once here (one error line, not one per process and no waiting
    for them to start) — ``out`` and its checkpoint, a GPU per process, a full global batch,
    no batch of one sample for unsynchronized batch norm, images the model takes, and an
    ``out`` that can be written. Also loads (and on first use downloads and caches) the
    data, so the processes do not all do it at once."""
    check_out_dir(config, out, resume, processes_record(nproc, sync_bn))
    last = WorldInfo(rank=nproc - 1, local_rank=nproc - 1, world_size=nproc)
    rank_device(config.device, last)  # a GPU for every process, or the CPU
    check_global_batch(check_models_take_data(config, (config.norm,), nproc, sync_bn))
    writing(out, lambda: check_writable(out))
