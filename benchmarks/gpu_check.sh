#!/usr/bin/env bash
# The GPU check in one call: paper-width training step (bf16, with and without gradient
# checkpointing), one inference pass and 8-pass latency, GPU utilisation, a 2-minute training
# run on synthetic data whose loss must fall, prediction and evaluation from files. At most
# about 8 minutes on one CUDA device. Writes gpu.json, gpu.md and performance-section.md (the
# docs/performance.md section) into the output folder.
#
#   bash benchmarks/gpu_check.sh                         # CUDA, into benchmarks/results/gpu
#   bash benchmarks/gpu_check.sh --device cpu --quick    # seconds: checks that the check works
#   bash benchmarks/gpu_check.sh --out DIR --minutes 2
#
# PYTHON picks the interpreter (default: python3); the package is imported from src/ when it
# is not installed, so a machine with PyTorch, nibabel and nilearn needs no install step.
set -euo pipefail
cd "$(dirname "$0")/.."
DEVICE=cuda
QUICK=()
OUT_DIR=benchmarks/results/gpu
MINUTES=2
while [[ $# -gt 0 ]]; do
  case "$1" in
    --device) DEVICE=$2; shift 2 ;;
    --quick) QUICK=(--quick); shift ;;
    --out) OUT_DIR=$2; shift 2 ;;
    --minutes) MINUTES=$2; shift 2 ;;
    -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
    *) echo "gpu_check.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
PY=${PYTHON:-python3}
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export CASCADESEG_GPU_CHECK_MINUTES=$MINUTES CASCADESEG_GPU_CHECK_KEEP=$OUT_DIR
mkdir -p "$OUT_DIR"
if command -v nvidia-smi >/dev/null 2>&1; then
  nvidia-smi || true
fi
status=0
"$PY" -m cascadeseg benchmark --suite gpu --device "$DEVICE" "${QUICK[@]}" \
  --out "$OUT_DIR/gpu.json" || status=$?
if [[ -f "$OUT_DIR/gpu.json" ]]; then
  "$PY" -m cascadeseg benchmark --render "$OUT_DIR/gpu.json" > "$OUT_DIR/performance-section.md"
  cat "$OUT_DIR/gpu.md"
fi
exit $status
