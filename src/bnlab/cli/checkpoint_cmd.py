"""``bnlab eval CHECKPOINT`` and ``bnlab inspect CHECKPOINT``."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from ..checkpoint import checkpoint_exists, load_checkpoint, read_checkpoint_state
from ..data import load_data_fashion_mnist
from ..device import select_device
from ..experiment import TrainConfig
from ..experiment.preflight import check_model_takes_images
from ..models import build_model
from ..norm import is_batch_norm
from ..train import evaluate
from .errors import CLIError
from .parser import decimals_int, device_name, path_arg, positive_int


def register(subparsers: argparse._SubParsersAction) -> None:
    ev = subparsers.add_parser("eval",
                               help="test loss and accuracy of a saved checkpoint")
    ev.add_argument("checkpoint", type=path_arg, help="run directory or its checkpoint/ directory")
    ev.add_argument("--batch-size", type=positive_int, default=256, help="evaluation batch size")
    ev.add_argument("--device", type=device_name, default="auto",
                    help="auto (cuda, mps, cpu), cpu, cuda[:N], mps")
    ev.add_argument("--data-dir", type=path_arg, default=None, metavar="DIR",
                    help="Fashion-MNIST directory (default: the run's, else the usual lookup)")
    ev.add_argument("--limit", type=positive_int, default=None, metavar="N",
                    help="evaluate the first N test samples only")
    ev.set_defaults(handler=run_eval)

    ins = subparsers.add_parser("inspect",
                                help="each BN layer's learned gamma, beta and running statistics")
    ins.add_argument("checkpoint", type=path_arg, help="run directory or its checkpoint/ directory")
    ins.add_argument("--precision", type=decimals_int, default=4,
                     help="decimals printed (0-100)")
    ins.set_defaults(handler=run_inspect)


def checkpoint_dir(path: Path) -> Path:
    """Accept a run directory (holding checkpoint/, or the copy of it an interrupted save
    left renamed aside) as well as the checkpoint itself."""
    return path / "checkpoint" if checkpoint_exists(path / "checkpoint") else path


def load_model(path: Path, device: torch.device) -> tuple[torch.nn.Module, TrainConfig, dict]:
    """The checkpoint's model, rebuilt from its config and loaded, in eval mode."""
    state = read_checkpoint_state(path)
    try:
        config = TrainConfig.from_dict(state.get("config", {}))
    except (TypeError, ValueError) as err:
        raise CLIError(f"{path}: the checkpoint's config is not a bnlab run config ({err})"
                       ) from None
    model = build_model(config.model, config.norm)
    load_checkpoint(path, model=model, map_location="cpu")
    return model.to(device).eval(), config, state


def run_eval(args: argparse.Namespace) -> int:
    device = select_device(args.device)
    path = checkpoint_dir(args.checkpoint)
    model, config, state = load_model(path, device)
    data_dir = args.data_dir if args.data_dir is not None else config.data_dir
    # A directory the run recorded is used as it is: never a download into it (it may be a
    # relative path saved by an older bnlab, meaning something else from here).
    download = config.download and (args.data_dir is not None or config.data_dir is None)
    _, test_loader = load_data_fashion_mnist(args.batch_size, root=data_dir, device=device,
                                             download=download, limit=args.limit)
    check_model_takes_images(model, config.model, test_loader)
    result = evaluate(model, test_loader, torch.nn.CrossEntropyLoss(), device=device)
    images = len(test_loader.labels)
    print(f"{path}: {config.model} norm={config.norm}, epoch {state['epoch']}: "
          f"test loss {result.loss:.4f}, test acc {result.acc:.2f}% ({images} test images)")
    if config.limit is not None and args.limit != config.limit:
        # Otherwise the accuracy looks like a contradiction of the run's metrics.json.
        print(f"(the run was trained and tested with --limit {config.limit}; "
              f"pass --limit {config.limit} to evaluate on the same test images)")
    return 0


def _fmt(t: torch.Tensor, decimals: int) -> str:
    return "[" + ", ".join(f"{v:.{decimals}f}" for v in t.flatten().tolist()) + "]"


def run_inspect(args: argparse.Namespace) -> int:
    path = checkpoint_dir(args.checkpoint)
    model, config, state = load_model(path, torch.device("cpu"))
    print(f"{path}: {config.model} norm={config.norm}, after epoch {state['epoch']}")
    layers = [(name, m) for name, m in model.named_modules() if is_batch_norm(m)]
    if not layers:
        print("no batch-norm layers in this model")
    for name, layer in layers:
        print(f"\nlayer {name}: {type(layer).__name__}({layer.num_features}), "
              f"batches tracked {int(layer.num_batches_tracked or 0)}")
        for label, value in (("gamma", layer.weight), ("beta", layer.bias),
                             ("running mean", layer.running_mean),
                             ("running var", layer.running_var)):
            if value is not None:
                print(f"  {label:<13}{_fmt(value.detach(), args.precision)}")
    return 0
