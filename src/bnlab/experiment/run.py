"""One training run with its outputs: checkpoint every epoch, metrics, curves, resume.

Output directory layout::

    OUT/checkpoint/     model + optimizer (safetensors), run state (JSON); every epoch
    OUT/metrics.csv     one row per completed epoch
    OUT/metrics.json    {"config": ..., "history": [...], "summary": {...}}
    OUT/curves.png      loss and accuracy per epoch (also when a run stops early)

A resumed run continues after the last completed epoch and ends bitwise-identical to an
uninterrupted one: weights, optimizer state and RNG states come from the checkpoint, and the
data order is a pure function of (seed, epoch).
"""

from __future__ import annotations

import contextlib
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from ..atomic_files import write_bytes_atomically
from ..checkpoint import (
    capture_rng_state,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
)
from ..data import load_data_fashion_mnist
from ..data.loader import TensorLoader
from ..device import select_device
from ..distributed import (
    DEFAULT_TIMEOUT_S,
    backend_for,
    cleanup,
    init_distributed,
    is_main_process,
    world_info,
)
from ..models import build_model, count_parameters
from ..train import EpochRecord, History, train_classify
from .config import TrainConfig
from .errors import RunError
from .parallel import agree_on_resume, check_global_batch, rank_device, wrap_model
from .plots import plot_curves
from .preflight import (
    CHECKPOINT_DIR,
    check_batches_normalizable,
    check_model_takes_images,
    check_out_dir,
    check_writable,
    processes_record,
    writing,
)

__all__ = ["RunError", "RunResult", "build_optimizer", "run_training", "seed_everything"]


@dataclass
class RunResult:
    """What a finished run leaves: its full history, the model and where outputs are."""

    config: TrainConfig
    history: History
    model: nn.Module
    out_dir: Path
    parameters: int
    resumed_from: int  # the last epoch the checkpoint had completed (0: fresh run)


def seed_everything(seed: int) -> None:
    """Seed torch (all devices), Python's ``random`` and NumPy's global generator."""
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)


def build_optimizer(config: TrainConfig, params) -> torch.optim.Optimizer:
    """The configured optimizer; its fused single-kernel implementation where torch has one
    for the parameters' device (same algorithm, one kernel per step instead of ~10 ops per
    tensor: about 15% of a LeNet step on the CPU)."""
    params = list(params)
    if config.optimizer == "sgd":
        cls, kwargs = torch.optim.SGD, {"momentum": config.momentum}
    else:
        cls, kwargs = (torch.optim.AdamW if config.optimizer == "adamw" else torch.optim.Adam), {}
    kwargs.update(lr=config.lr, weight_decay=config.weight_decay)
    try:
        return cls(params, fused=True, **kwargs)
    except (RuntimeError, ValueError):  # no fused kernel for this device or dtype
        return cls(params, **kwargs)


def write_metrics(out_dir: Path, config: TrainConfig, history: History) -> None:
    """metrics.csv and metrics.json, each replaced atomically."""
    summary: dict[str, Any] = {}
    if len(history):
        summary = {
            "epochs": len(history),
            "final_test_acc": history.final_test_acc,
            "best_test_acc": history.best_test_acc,
            "best_epoch": history.best_epoch,
            "final_train_loss": history.final_train_loss,
            "mean_epoch_seconds": history.mean_epoch_seconds,
            "peak_memory_bytes": history.peak_memory_bytes,
        }
    document = {"config": config.to_dict(), "history": history.to_dict(), "summary": summary}
    write_bytes_atomically(out_dir / "metrics.json",
                           (json.dumps(document, indent=2) + "\n").encode())
    write_bytes_atomically(out_dir / "metrics.csv", history.csv_text().encode())


def run_training(
    config: TrainConfig,
    out_dir: str | Path,
    *,
    resume: bool = False,
    progress: bool = True,
    sync_bn: bool = True,
    dist_timeout_s: float = DEFAULT_TIMEOUT_S,
) -> RunResult:
    """Train ``config`` writing outputs to ``out_dir`` (see the module docstring).

    ``resume``: continue from ``out_dir/checkpoint`` after its last completed epoch (a fresh
    run when there is none). Without ``resume`` an existing checkpoint is never overwritten.
    Raises RunError, ValueError, DatasetError or CheckpointError with a one-line message.

    Multi-process, when the environment says ``WORLD_SIZE`` > 1 (torchrun, ``bnlab train
    --nproc``): this process joins the process group (gloo on CPU, nccl on CUDA; every
    collective times out after ``dist_timeout_s`` seconds) and trains the DDP-wrapped model
    (BN layers synchronized unless ``sync_bn=False``) on its ``batch_size`` share of each
    global batch of ``batch_size`` x world samples (the last partial global batch of an
    epoch is left out, so all ranks take the same steps); each test sample is evaluated once
    over all ranks. Only rank 0 prints and writes files; every rank returns the same history.
    """
    world = world_info()
    out = Path(out_dir)
    processes = processes_record(world.world_size, sync_bn)
    state = check_out_dir(config, out, resume, processes)
    device = rank_device(config.device, world) if world.distributed else select_device(
        config.device)
    seed_everything(config.seed)
    model = build_model(config.model, config.norm)  # seeded initialisation, on the CPU
    train_loader, test_loader = load_data_fashion_mnist(
        config.batch_size, root=config.data_dir, device=device, seed=config.seed,
        download=config.download, limit=config.limit, rank=world.rank,
        world_size=world.world_size, drop_last=world.distributed,
    )
    if is_main_process() and train_loader.location is not None:
        where = train_loader.location
        print(f"Fashion-MNIST from {where.kind} ({where.directory}): "
              f"{len(train_loader.labels)} training and {len(test_loader.labels)} test images",
              flush=True)
    check_batches_normalizable(model, train_loader, config.max_steps,
                               world.distributed and sync_bn)
    model.to(device)
    check_model_takes_images(model, config.model, train_loader)
    loaders = (train_loader, test_loader)
    if not world.distributed:
        return _train(config, out, state, model, model, loaders, device, progress, processes)
    check_global_batch(train_loader)
    joined = not dist.is_initialized()
    init_distributed(backend_for(device), dist_timeout_s)
    try:
        agree_on_resume(0 if state is None else int(state["epoch"]), device)
        net = wrap_model(model, device, sync_bn)
        result = _train(config, out, state, model, net, loaders, device, progress, processes)
        if joined:
            # Leave together: tearing gloo down while a peer is still writing its outputs
            # has been seen to abort that peer at exit.
            dist.barrier()
        return result
    finally:
        if joined:
            cleanup()


def _train(
    config: TrainConfig,
    out: Path,
    state: dict[str, Any] | None,
    model: nn.Module,
    net: nn.Module,
    loaders: tuple[TensorLoader, TensorLoader],
    device: torch.device,
    progress: bool,
    processes: dict[str, Any],
) -> RunResult:
    """Train ``net`` (``model`` itself, or its DDP wrapper) and write the outputs."""
    distributed = net is not model
    main = is_main_process()
    ckpt_dir = out / CHECKPOINT_DIR
    train_loader, test_loader = loaders
    optimizer = build_optimizer(config, model.parameters())
    history, done = History(), 0
    if state is not None:
        load_checkpoint(ckpt_dir, model=model, optimizer=optimizer, map_location=device)
        restore_rng_state(state["rng"])
        history = History.from_dict({"epochs": state["history"]})  # checked by resume_point
        done = int(state["epoch"])
        if main:
            print(f"Resuming {out} after epoch {done} of {config.epochs}", flush=True)
    if main:
        writing(out, lambda: check_writable(out))
    train_loader.set_epoch(done)  # epoch k (1-based) uses the loader's epoch k - 1

    def on_epoch_end(record: EpochRecord, _net: nn.Module, opt: torch.optim.Optimizer) -> None:
        history.append(record)
        if not main:
            return
        save_checkpoint(ckpt_dir, model=model, optimizer=opt, state={
            "epoch": record.epoch,
            "config": config.to_dict(),
            "history": history.to_dict()["epochs"],
            "processes": processes,
            "rng": capture_rng_state(),
        })
        writing(out, lambda: write_metrics(out, config, history))

    def write_curves() -> None:
        if len(history) and main:
            writing(out, lambda: plot_curves(
                history, out / "curves.png",
                title=f"{config.model}, norm={config.norm}, seed={config.seed}"))

    try:
        train_classify(
            net, train_loader, test_loader, optimizer, torch.nn.CrossEntropyLoss(),
            config.epochs, device=device, progress=progress, start_epoch=done + 1,
            on_epoch_end=on_epoch_end, max_steps=config.max_steps, distributed=distributed,
        )
    except BaseException:
        # A run stopped early (Ctrl-C, a failed epoch) still leaves the curves of the epochs
        # it completed beside their metrics; the original error is what propagates.
        with contextlib.suppress(Exception):
            write_curves()
        raise
    write_curves()
    return RunResult(config, history, model, out, count_parameters(model), done)
