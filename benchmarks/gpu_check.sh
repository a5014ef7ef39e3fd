#!/usr/bin/env bash
# The GPU check, one command on the GPU machine (no network, no ../shared, no default-model package there):
#   on the CPU machine first:  bash benchmarks/gpu_prepare.sh        (fills .gpu/, to be carried: carry [".gpu"])
#   then on the GPU machine:   bash benchmarks/gpu_check.sh          (4.5 minutes on one H200 on 2026-11-27, before
#                              the CUDA-graph training rows; 6.3 on 2026-11-28, with 25 s of kernel tile tuning,
#                              20 s now; the timeouts below stop it at 8.5)
# Options after the command go to gpu_check.py: `--parts search` measures search and mining only,
# `--tune-seconds 0` leaves out the timing of other kernel tiles.
# Runs the CUDA tests (tests/test_cuda.py: the fused kernel against the PyTorch path and brute force, encoding and
# a training step against the CPU), then benchmarks/gpu_check.py (encoding, search, mining, training against
# sentence-transformers). Figures and logs go to $OUT (default gpu-check-out/); the exit status is 1 on any failure.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-check-out}
mkdir -p "$OUT"
[ -f .gpu/tokenizer.json ] || { echo "no .gpu/: run bash benchmarks/gpu_prepare.sh on the CPU machine and carry .gpu" >&2; exit 2; }
PYTHON=${PYTHON:-$(command -v python3 || command -v python)}
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD MINISBERT_GPU_ASSETS=$PWD/.gpu HF_HUB_OFFLINE=1
if compgen -G ".gpu/wheels/*.whl" >/dev/null; then  # datasets for sentence-transformers' fit(), see gpu_prepare.sh
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --target "${TMPDIR:-/tmp}/gpu-check-site" .gpu/wheels/*.whl \
        && export PYTHONPATH=$PYTHONPATH:${TMPDIR:-/tmp}/gpu-check-site
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
timeout 240 "$PYTHON" -m pytest -q -rs -p no:cacheprovider tests/test_cuda.py 2>&1 | tee "$OUT/tests.log"
tests=${PIPESTATUS[0]}
# search and the kernel's settings first, then training, then encoding: parts not started by 240 s are listed as such
timeout 270 "$PYTHON" benchmarks/gpu_check.py --assets .gpu --json "$OUT/gpu_check.json" --tune-seconds 20 \
    --seconds 240 "$@" 2>&1 | tee "$OUT/bench.log"
bench=${PIPESTATUS[0]}
echo "CUDA tests exit $tests, measurements exit $bench; figures in $OUT/gpu_check.json"
[ "$tests" = 0 ] && [ "$bench" = 0 ]
