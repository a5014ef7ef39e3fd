#!/usr/bin/env bash
# The GPU check, one command on the GPU machine (no network, no ../shared, no default-model package there):
#   on the CPU machine first:  bash benchmarks/gpu_prepare.sh        (fills .gpu/, to be carried: carry [".gpu"])
#   then on the GPU machine:   bash benchmarks/gpu_check.sh          (sized for 8 minutes on one H100; not yet run on one)
# Runs the CUDA tests (tests/test_cuda.py: the fused kernel against the PyTorch path and brute force, encoding and
# a training step against the CPU), then benchmarks/gpu_check.py (encoding, search, mining, training against
# sentence-transformers). Figures and logs go to $OUT (default gpu-check-out/); the exit status is 1 on any failure.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-check-out}
mkdir -p "$OUT"
[ -f .gpu/tokenizer.json ] || { echo "no .gpu/: run bash benchmarks/gpu_prepare.sh on the CPU machine and carry .gpu" >&2; exit 2; }
export PYTHONPATH=$PWD MINISBERT_GPU_ASSETS=$PWD/.gpu HF_HUB_OFFLINE=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
timeout 240 python -m pytest -q -rs -p no:cacheprovider tests/test_cuda.py 2>&1 | tee "$OUT/tests.log"
tests=${PIPESTATUS[0]}
timeout 420 python benchmarks/gpu_check.py --assets .gpu --json "$OUT/gpu_check.json" 2>&1 | tee "$OUT/bench.log"
bench=${PIPESTATUS[0]}
echo "CUDA tests exit $tests, measurements exit $bench; figures in $OUT/gpu_check.json"
[ "$tests" = 0 ] && [ "$bench" = 0 ]
