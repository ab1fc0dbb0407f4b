"""The notebook's whole experiment: the same LeNet without BN, with bnlab BN and with torch
BN, trained on the same data from the same seed, summarised in one table and one plot.

Each run has a fresh process of its own, exactly as a separate ``bnlab train`` would: its
peak memory on the CPU is the process's resident high-water mark, which in one shared
process would carry over from run to run (imports, memory malloc keeps for reuse).
"""

from __future__ import annotations

import dataclasses
import json
import pickle
import subprocess
import sys
import tempfile
import traceback
from collections.abc import Sequence
from pathlib import Path

from ..atomic_files import write_bytes_atomically
from ..checkpoint import load_checkpoint
from ..device import select_device
from ..host import freed_memory_kept
from ..memory import format_bytes
from ..models import build_model
from ..train import History
from .config import TrainConfig
from .errors import RunError
from .plots import plot_overlay
from .preflight import CHECKPOINT_DIR, check_models_take_data, check_out_dir, processes_record
from .run import RunResult, run_training

__all__ = ["DEFAULT_NORMS", "check_compare", "compare_table", "run_compare"]

DEFAULT_NORMS = ("none", "bnlab", "torch")
LABELS = {"none": "LeNet (no BN)", "bnlab": "LeNet + bnlab BN", "torch": "LeNet + torch BN"}
OUTPUTS = ("comparison.md", "comparison.json", "compare.png")


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
    ``comparison.md``, ``comparison.json`` and the overlay plot ``compare.png``. What
    :func:`check_compare` finds is raised before the first model trains."""
    out = Path(out_dir)
    check_compare(config, out, norms, resume)
    results = []
    for norm in norms:
        run_config = dataclasses.replace(config, norm=norm)
        print(f"\n=== {LABELS.get(norm, norm)} ===", flush=True)
        results.append(run_in_own_process(run_config, out / norm, resume, progress))
    try:
        _write_outputs(config, out, norms, results)
    except OSError as err:  # disk full, a directory made meanwhile where a file goes
        raise RunError(f"cannot write the comparison's outputs in {out}: {err} (each "
                       f"model's run is complete in its own directory there)") from None
    return results


def check_compare(config: TrainConfig, out: Path, norms: Sequence[str], resume: bool) -> None:
    """RunError (DatasetError, ValueError, CheckpointError) for what would otherwise stop
    the comparison after some models had trained: an ``out`` that is a file or holds a
    directory where an output file goes, a run directory that cannot be started or
    resumed, an unavailable device, data that cannot be loaded, a batch of one sample, or
    images the model cannot take."""
    if out.exists() and not out.is_dir():
        raise RunError(f"--out {out} is a file; name a directory for the comparison")
    for name in OUTPUTS:
        if (out / name).is_dir():
            raise RunError(f"{out / name} is a directory where the comparison writes a file: "
                           "move it away or choose another --out")
    processes = processes_record(1, False)
    for norm in norms:
        check_out_dir(dataclasses.replace(config, norm=norm), out / norm, resume, processes)
    select_device(config.device)
    check_models_take_data(config, norms)


def _write_outputs(config: TrainConfig, out: Path, norms: Sequence[str],
                   results: list[RunResult]) -> None:
    table = compare_table(results)
    write_bytes_atomically(out / "comparison.md", (table + "\n").encode())
    summary = {r.config.norm: {"history": r.history.to_dict()["epochs"],
                               "parameters": r.parameters} for r in results}
    shared = {k: v for k, v in config.to_dict().items() if k != "norm"} | {"norms": list(norms)}
    write_bytes_atomically(out / "comparison.json",
                           (json.dumps({"config": shared, "runs": summary},
                                       indent=2) + "\n").encode())
    plot_overlay({LABELS.get(r.config.norm, r.config.norm): r.history for r in results},
                 out / "compare.png")


def run_in_own_process(config: TrainConfig, out: Path, resume: bool, progress: bool) -> RunResult:
    """:func:`run_training` in a new Python interpreter (its output goes where this one's
    does; started with ``python -c``, so the calling script is not run again and needs no
    ``__main__`` guard); its errors are raised here, Ctrl-C stops it. The returned model is
    read back from the run's checkpoint, on the CPU."""
    with tempfile.TemporaryDirectory(prefix="bnlab-run-") as tmp:  # private: mode 0700
        job, reply = Path(tmp) / "job.pickle", Path(tmp) / "reply.pickle"
        job.write_bytes(pickle.dumps({"path": sys.path, "args": (config, out, resume,
                                                                 progress)}))
        child = subprocess.Popen([sys.executable, "-c", _CHILD, str(job), str(reply)])
        try:
            child.wait()
        except KeyboardInterrupt:  # the child has it too: give it time to stop, then make sure
            try:
                child.wait(30)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
            raise
        message = pickle.loads(reply.read_bytes()) if reply.exists() else None
    if message is None:  # it died without a word (killed, out of memory)
        raise RunError(f"the {config.norm} run's process ended with status {child.returncode} "
                       "and no result")
    if message[0] == "interrupted":
        raise KeyboardInterrupt
    if message[0] == "error":
        raise message[1]
    _, history, parameters, resumed_from = message
    model = build_model(config.model, config.norm)
    load_checkpoint(out / CHECKPOINT_DIR, model=model)
    return RunResult(config, History.from_dict({"epochs": history}), model, out, parameters,
                     resumed_from)


# The new interpreter's program: the caller's import path, then the run.
_CHILD = ("import pickle, sys\n"
          "job = pickle.loads(open(sys.argv[1], 'rb').read())\n"
          "sys.path[:] = job['path']\n"
          "from bnlab.experiment.compare import child_main\n"
          "child_main(*job['args'], reply=sys.argv[2])\n")


def child_main(config: TrainConfig, out: Path, resume: bool, progress: bool, *,
               reply: str) -> None:
    """The run, in the new interpreter: its result or its error is pickled to ``reply``."""
    try:
        with freed_memory_kept():  # as bnlab's commands run
            result = run_training(config, out, resume=resume, progress=progress)
        message = ("ok", result.history.to_dict()["epochs"], result.parameters,
                   result.resumed_from)
    except KeyboardInterrupt:
        message = ("interrupted",)
    except Exception as err:
        if hasattr(err, "add_note"):  # Python 3.11+: shown with the parent's traceback
            err.add_note("raised in the run's own process:\n" + traceback.format_exc().rstrip())
        message = ("error", err)
    try:
        data = pickle.dumps(message)
    except Exception:  # an error that cannot be pickled: its text
        data = pickle.dumps(("error", RunError(f"{type(message[1]).__name__}: {message[1]}")))
    Path(reply).write_bytes(data)
    if message[0] == "interrupted":
        sys.exit(130)
