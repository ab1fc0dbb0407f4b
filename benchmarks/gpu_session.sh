#!/usr/bin/env bash
# The checks for a session lent a CUDA GPU (the `device` tool), in one short run:
# target 5's layer benchmark, the LeNet epoch time on the GPU (bnlab BN, torch BN, no BN)
# and the Triton path's CUDA tests. Results go to $OUT (default /tmp/gpu-out).
# Usage, from the repository root: DATA=<Fashion-MNIST dir> bash benchmarks/gpu_session.sh
set -u
export PYTHONPATH="$PWD/src:$PWD" PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/gpu-out}
DATA=${DATA:-.gpu_data}
mkdir -p "$OUT"
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__,
torch.cuda.get_device_name())" 2>&1 | tee "$OUT/env.txt"
# The Triton path's C++ autograd node is compiled on first use: once here, not inside a timing.
timeout 240 python3 -c "from bnlab.norm.gpu import node_status; print(node_status())" 2>&1 | tee -a "$OUT/env.txt"
timeout 200 python3 -m benchmarks.gpu --repeats 7 --overhead 2>&1 | tee "$OUT/bench.txt"
for norm in bnlab torch none; do
  timeout 90 python3 -m bnlab train --device cuda --norm "$norm" --epochs 3 \
    --data-dir "$DATA" --no-download --no-progress --out "/tmp/run-$norm" 2>&1 | tail -4
  cp "/tmp/run-$norm/metrics.csv" "$OUT/epochs-$norm.csv"
done 2>&1 | tee "$OUT/train.txt"
timeout 150 python3 -m pytest tests/norm/test_triton.py -q -p no:cacheprovider \
  -k "cuda and triton-" --tb=short 2>&1 | tail -60 | tee "$OUT/tests.txt"
