"""The notebook's whole experiment: the same LeNet without BN, with bnlab BN and with torch
BN, trained on the same data from the same seed, summarised in one table and one plot."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path

from ..atomic_files import write_bytes_atomically
from ..memory import format_bytes
from .config import TrainConfig
from .plots import plot_overlay
from .run import RunResult, run_training

__all__ = ["DEFAULT_NORMS", "compare_table", "run_compare"]

DEFAULT_NORMS = ("none", "bnlab", "torch")
LABELS = {"none": "LeNet (no BN)", "bnlab": "LeNet + bnlab BN", "torch": "LeNet + torch BN"}


def compare_table(results: Sequence[RunResult]) -> str:
    """A markdown table: one row per run."""
    lines = [
        "| model | final test acc (%) | best test acc (%) | final train loss | s/epoch "
        "| peak memory | parameters |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        h = r.history
        lines.append(
            f"| {LABELS.get(r.config.norm, r.config.norm)} | {h.final_test_acc:.2f} | "
            f"{h.best_test_acc:.2f} (epoch {h.best_epoch}) | {h.final_train_loss:.4f} | "
            f"{h.mean_epoch_seconds:.2f} | {format_bytes(h.peak_memory_bytes)} | "
            f"{r.parameters:,} |"
        )
    return "\n".join(lines)


def run_compare(
    config: TrainConfig,
    out_dir: str | Path,
    *,
    norms: Sequence[str] = DEFAULT_NORMS,
    resume: bool = False,
    progress: bool = True,
) -> list[RunResult]:
    """Train ``config`` once per norm in ``norms`` into ``out_dir/<norm>/``; write
    ``comparison.md``, ``comparison.json`` and the overlay plot ``compare.png``."""
    out = Path(out_dir)
    results = []
    for norm in norms:
        run_config = dataclasses.replace(config, norm=norm)
        print(f"\n=== {LABELS.get(norm, norm)} ===", flush=True)
        results.append(run_training(run_config, out / norm, resume=resume, progress=progress))
    table = compare_table(results)
    write_bytes_atomically(out / "comparison.md", (table + "\n").encode())
    summary = {r.config.norm: {"history": r.history.to_dict()["epochs"],
                               "parameters": r.parameters} for r in results}
    write_bytes_atomically(out / "comparison.json",
                           (json.dumps({"config": config.to_dict(), "runs": summary},
                                       indent=2) + "\n").encode())
    plot_overlay({LABELS.get(r.config.norm, r.config.norm): r.history for r in results},
                 out / "compare.png")
    return results
