"""``python -m benchmarks [--quick]``: every speed target in one run (layer, training, data;
the GPU path's host time without a GPU; the GPU layer table where there is a CUDA GPU).
``--quick``: fewer repeats, shorter data runs, and target 4 (fresh-process epochs,
minutes) left out."""

import argparse

import torch

from . import data_loader, gpu, host, layer, training

if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--quick", action="store_true",
                        help="a quick pass: fewer repeats, no target 4")
    quick = parser.parse_args().quick
    print("## Target 1: one layer, forward + backward, training mode\n")
    layer.main(["--quick"] if quick else [])
    print("\n## Targets 2-4: training\n")
    training.main(["--repeats", "3", "--skip-epoch"] if quick else [])
    print("\n## Data loading\n")
    data_loader.main(["--repeats", "2", "--train-epochs", "1"] if quick else [])
    print("\n## Target 5, host side: the GPU path's host time per call, launches stubbed\n")
    host.main(["--rounds", "5"] if quick else [])
    if torch.cuda.is_available():
        print("\n## Target 5: one layer on the GPU\n")
        gpu.main([])
