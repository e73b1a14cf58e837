#!/usr/bin/env bash
# The GPU benchmarks of issues 2, 3 and 4 in one call on a lent GPU machine (its own python3
# with torch; trainflow is not installed there, so the repo root goes on PYTHONPATH).
# Each part has its own time limit so one slow part cannot starve the rest.
set -u
export PYTHONPATH="$PWD" PYTHONUNBUFFERED=1
out="${OUT:-/tmp}"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$out/card.txt"
python3 -c "import torch; print('torch', torch.__version__)" | tee -a "$out/card.txt"
timeout 80 python3 bench/trainer_loop.py --device cuda --repeats 5 --steps 1000 --large-steps 300 \
  2>&1 | tee "$out/trainer_cuda.txt"
timeout 45 python3 bench/ddp.py --device cuda --rounds 5 --steps 100 2>&1 | tee "$out/ddp_cuda.txt"
timeout 30 python3 bench/metrics.py --device cuda --iters 300 --repeats 3 --no-sync \
  2>&1 | tee "$out/metrics_cuda.txt"
