#!/usr/bin/env bash
# The GPU check of prunelab, for a machine with a CUDA device (well under 10 minutes):
#  1. the CUDA tests (pytest -m cuda) and the bf16/fp16 precision tests;
#  2. VGG-16 training images/s dense vs masked (90% magnitude) under bf16 at batch 64,
#     224x224 (target: masked <= 1.05x the dense step time), and ResNet-18 likewise.
# Output goes to benchmarks/results/gpu/ (commit it). Usage: bash scripts/gpu_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
OUT=benchmarks/results/gpu
mkdir -p "$OUT"
"$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device: nothing to check')"
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1 || true
{
  echo "# pytest -m cuda and the precision tests on $(date -u +%FT%TZ)"
  "$PY" -m pytest -q -p no:cacheprovider -m cuda tests src/prunelab 2>&1 | tail -15
  "$PY" -m pytest -q -p no:cacheprovider tests/test_training.py -k precision 2>&1 | tail -3
} | tee "$OUT/tests.txt"
cd benchmarks
for model in torchvision.vgg16 torchvision.resnet18; do
  name=${model#torchvision.}
  timeout 240 "../$PY" bench_train_step.py --model "$model" --batch 64 --device cuda \
    --precision bf16 --repeats 10 --steps 5 --warmup 2 --out "../$OUT" \
    --tag "$name-b64-cuda-bf16" | tail -8
done
