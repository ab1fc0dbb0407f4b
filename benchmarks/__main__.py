"""``python -m benchmarks``: every speed target in one run (layer, training, data)."""

import sys

from . import data_loader, layer, training

if __name__ == "__main__":
    quick = "--quick" in sys.argv
    print("## Target 1: one layer, forward + backward, training mode\n")
    layer.main(["--quick"] if quick else [])
    print("\n## Targets 2-4: training\n")
    training.main(["--repeats", "3", "--skip-epoch"] if quick else [])
    print("\n## Data loading\n")
    data_loader.main([])
