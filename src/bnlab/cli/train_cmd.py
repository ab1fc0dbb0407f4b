"""``bnlab train`` (one run) and ``bnlab compare`` (the notebook's experiment)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..distributed import is_main_process, world_info
from ..experiment import OPTIMIZERS, TrainConfig, compare_table, run_compare, run_training
from ..experiment.preflight import check_launch
from ..memory import format_bytes
from ..models import NORMS, available_models
from .errors import CLIError
from .parser import (
    device_name,
    non_negative_float,
    path_arg,
    positive_float,
    positive_int,
    seed_int,
)
from .train_parallel import add_parallel_options, launch, refuse_under_torchrun


def add_run_options(p: argparse.ArgumentParser) -> None:
    """Options shared by train and compare (defaults: the notebook's run)."""
    d = TrainConfig()
    p.add_argument("--model", choices=available_models(), default=d.model, help="architecture")
    p.add_argument("--epochs", type=positive_int, default=d.epochs, help="epochs to train")
    p.add_argument("--batch-size", type=positive_int, default=d.batch_size, help="batch size")
    p.add_argument("--optimizer", choices=OPTIMIZERS, default=d.optimizer, help="optimizer")
    p.add_argument("--lr", type=positive_float, default=d.lr, help="learning rate")
    p.add_argument("--weight-decay", type=non_negative_float, default=d.weight_decay,
                   help="weight decay")
    p.add_argument("--momentum", type=non_negative_float, default=d.momentum,
                   help="momentum (sgd only)")
    p.add_argument("--seed", type=seed_int, default=d.seed,
                   help="random seed (weights, data order)")
    p.add_argument("--device", type=device_name, default=d.device,
                   help="auto (cuda, mps, cpu), cpu, cuda[:N], mps")
    p.add_argument("--data-dir", type=path_arg, default=None, metavar="DIR",
                   help="Fashion-MNIST directory (default: $BNLAB_DATA, cache, system, download)")
    p.add_argument("--no-download", action="store_true", help="never download the dataset")
    p.add_argument("--limit", type=positive_int, default=None, metavar="N",
                   help="use only the first N samples of each split (quick runs)")
    p.add_argument("--max-steps", type=positive_int, default=None, metavar="N",
                   help="at most N training batches per epoch (quick runs)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out after its last completed epoch")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def register(subparsers: argparse._SubParsersAction) -> None:
    train = subparsers.add_parser(
        "train",
        help="train one model on Fashion-MNIST; writes metrics, curves and a checkpoint",
    )
    train.add_argument("--norm", choices=NORMS, default=TrainConfig().norm,
                       help="batch norm implementation (none: no BN layers)")
    add_run_options(train)
    train.add_argument("--out", type=path_arg, default=None,
                       help="output directory (default: runs/<model>-<norm>-seed<seed>)")
    add_parallel_options(train)
    train.set_defaults(handler=run_train)

    compare = subparsers.add_parser(
        "compare",
        help="the notebook's experiment: LeNet without BN, with bnlab BN, with torch BN "
             "(not data-parallel: no --nproc or torchrun)",
    )
    add_run_options(compare)
    compare.add_argument("--out", type=path_arg, default=None,
                         help="output directory (default: runs/compare-<model>-seed<seed>)")
    compare.set_defaults(handler=run_compare_cmd)


def config_from_args(args: argparse.Namespace, norm: str) -> TrainConfig:
    try:
        return TrainConfig(
            model=args.model, norm=norm, epochs=args.epochs, batch_size=args.batch_size,
            optimizer=args.optimizer, lr=args.lr, weight_decay=args.weight_decay,
            momentum=args.momentum, seed=args.seed, device=args.device,
            # absolute: `bnlab eval` may run elsewhere, and must find the same files
            data_dir=None if args.data_dir is None else str(args.data_dir.resolve()),
            download=not args.no_download, limit=args.limit, max_steps=args.max_steps,
        )
    except ValueError as err:
        raise CLIError(str(err)) from None


def run_train(args: argparse.Namespace) -> int:
    config = config_from_args(args, args.norm)
    out = args.out or Path("runs") / f"{config.model}-{config.norm}-seed{config.seed}"
    options = {"resume": args.resume, "progress": not args.no_progress,
               "sync_bn": not args.no_sync_bn, "dist_timeout_s": args.dist_timeout}
    if args.nproc > 1:
        refuse_under_torchrun()  # before anything is loaded or created
        # Here once, not in each process (each would print the same error line).
        check_launch(config, out, args.resume, args.nproc, not args.no_sync_bn)
        return launch(args.nproc, train_and_report, config, out, options)
    return train_and_report(config, out, options)


def train_and_report(config: TrainConfig, out: Path, options: dict) -> int:
    """Run the training (one process of several, under torchrun or --nproc, or the only
    one); the main process prints the summary."""
    result = run_training(config, out, **options)
    if not is_main_process():
        return 0
    h = result.history
    print(f"\n{config.model} norm={config.norm}: final test acc {h.final_test_acc:.2f}%, "
          f"best {h.best_test_acc:.2f}% (epoch {h.best_epoch}), final train loss "
          f"{h.final_train_loss:.4f}, {h.mean_epoch_seconds:.2f} s/epoch, peak memory "
          f"{format_bytes(h.peak_memory_bytes)}, {result.parameters:,} parameters")
    print(f"outputs in {out}/: metrics.csv, metrics.json, curves.png, checkpoint/")
    return 0


def run_compare_cmd(args: argparse.Namespace) -> int:
    if world_info().distributed:
        raise CLIError("compare is not data-parallel; start it without torchrun")
    config = config_from_args(args, "bnlab")
    out = args.out or Path("runs") / f"compare-{config.model}-seed{config.seed}"
    results = run_compare(config, out, resume=args.resume, progress=not args.no_progress)
    print()
    print(compare_table(results))
    print(f"\noutputs in {out}/: comparison.md, comparison.json, compare.png, and one run "
          "directory per model")
    return 0
