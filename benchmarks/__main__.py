"""``python -m benchmarks``: every speed target in one run (layer, training, data; and the
GPU layer table where there is a CUDA GPU)."""

import sys

import torch

from . import data_loader, gpu, layer, training

if __name__ == "__main__":
    quick = "--quick" in sys.argv
    print("## Target 1: one layer, forward + backward, training mode\n")
    layer.main(["--quick"] if quick else [])
    print("\n## Targets 2-4: training\n")
    training.main(["--repeats", "3", "--skip-epoch"] if quick else [])
    print("\n## Data loading\n")
    data_loader.main([])
    if torch.cuda.is_available():
        print("\n## Target 5: one layer on the GPU\n")
        gpu.main([])
