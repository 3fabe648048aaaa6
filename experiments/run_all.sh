#!/usr/bin/env bash
# Run both papers' studies, the side-by-side table and the missing-sequence study on synthetic
# data, then write docs/results.md. Every step is reused when its outputs already exist, so an interrupted run
# can simply be started again.
#
#   bash experiments/run_all.sh      # the documented settings (about 90 min on 2 CPU cores)
#   STEPS=4 STEPS_3D=4 TRAIN_CASES=5 TEST_CASES=2 SCALE=0.5 OUT=/tmp/studies_smoke \
#     DOC=/tmp/results_smoke.md bash experiments/run_all.sh      # smoke test of every step
#   MINUTES=4 bash experiments/run_all.sh   # the wall-clock mode: 4 min per model instead
#
# Settings (environment variables): STEPS (optimiser steps per 2D model, batch 8), STEPS_3D
# (per 3D model, batch 2), MINUTES (set: the wall-clock mode, that many minutes per model,
# instead of the steps), TRAIN_CASES, TEST_CASES, DATA_SEED, SEED, SCALE (synthetic grid scale),
# OUT (outputs), DOC (page written), EXTRA (extra options for every study script, e.g.
# "--set key=value --no-progress"), MAX_SNAPSHOTS (cap on the snapshot ensemble), TUNE=0 (skip
# tuning the ET threshold), MISSING_TTA=1 (8-flip TTA in the missing-sequence study: about
# 4 times its prediction time).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
STEPS="${STEPS:-300}"
STEPS_3D="${STEPS_3D:-600}"
MINUTES="${MINUTES:-}"
TRAIN_CASES="${TRAIN_CASES:-16}"
TEST_CASES="${TEST_CASES:-6}"
DATA_SEED="${DATA_SEED:-2026}"
SEED="${SEED:-0}"
SCALE="${SCALE:-1}"
OUT="${OUT:-experiments/out}"
DOC="${DOC:-docs/results.md}"
EXTRA="${EXTRA:-}"
MAX_SNAPSHOTS="${MAX_SNAPSHOTS:-0}"   # 0: every snapshot the two-stage run kept (8)
TUNE="${TUNE:-1}"                     # 0: skip tuning the ET threshold on the validation fold
MISSING_TTA="${MISSING_TTA:-0}"       # 1: flip TTA on every prediction of the missing study

if [ -n "$MINUTES" ]; then
  BUDGET=(--steps 0 --minutes "$MINUTES")
else
  BUDGET=(--steps "$STEPS" --steps-3d "$STEPS_3D")
fi
ARGS=(--out "$OUT" "${BUDGET[@]}" --train-cases "$TRAIN_CASES" --test-cases "$TEST_CASES"
      --data-seed "$DATA_SEED" --seed "$SEED" --scale "$SCALE")
# shellcheck disable=SC2206
[ -n "$EXTRA" ] && ARGS+=($EXTRA)

echo "== $(date -u '+%F %T') cascadeseg studies: ${ARGS[*]}"
"$PY" experiments/cunet_study.py "${ARGS[@]}"
echo "== $(date -u '+%F %T') CU-Net study done"
# The ET threshold tuned on the validation fold is the costliest optional step (snapshots x 8
# flips on every validation case): the first pass leaves it out so a complete page exists
# early; the last pass adds it, reusing everything else.
"$PY" experiments/two_stage_study.py "${ARGS[@]}" --max-snapshots "$MAX_SNAPSHOTS" --no-tune
echo "== $(date -u '+%F %T') two-stage study done"
"$PY" experiments/side_by_side.py "${ARGS[@]}" --max-snapshots "$MAX_SNAPSHOTS"
echo "== $(date -u '+%F %T') side-by-side done"
MISSING_ARGS=()
[ "$MISSING_TTA" != 0 ] && MISSING_ARGS+=(--tta)
"$PY" experiments/missing_study.py "${ARGS[@]}" ${MISSING_ARGS[@]+"${MISSING_ARGS[@]}"}
echo "== $(date -u '+%F %T') missing-sequence study done"
"$PY" experiments/write_results.py --out "$OUT" --doc "$DOC"
echo "== $(date -u '+%F %T') results written"
if [ "$TUNE" != 0 ]; then
  "$PY" experiments/two_stage_study.py "${ARGS[@]}" --max-snapshots "$MAX_SNAPSHOTS"
  echo "== $(date -u '+%F %T') ET threshold tuned on the validation fold"
  "$PY" experiments/write_results.py --out "$OUT" --doc "$DOC"
fi
echo "== $(date -u '+%F %T') all done"
