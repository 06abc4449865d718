#!/usr/bin/env bash
# The GPU run: stage 1, stage 2 and an evaluation on packed shards, within a time budget.
#
# Prepare here (CPU), once:
#   smirk-edge pack --annotations /work/cache/annotations --include utkface/ --shuffle-seed 0 \
#       --max-mib 30 -o .carry/shards/utkface
#   smirk-edge pack --annotations /work/cache/annotations --include expressive/ --max-mib 24 \
#       -o .carry/shards/expressive --split-out .carry/shards/expressive/split.json \
#       --subjects-csv ../shared/data/faces/expressive.csv
#   cp ../shared/data/faces/expressive.csv .carry/shards/expressive/
# Launch through the device tool (carry: [".carry"]; each command at most 10 minutes):
#   bash training/gpu_run.sh all        # stage 1 (MIN1) + stage 2 (MIN2) + eval, one call
#   bash training/gpu_run.sh stage1     # or one stage per call on the same warm machine:
#   bash training/gpu_run.sh stage2     #   runs/gpu/ (git-ignored) survives between calls
#   bash training/gpu_run.sh eval
# Environment: MIN1, MIN2 (minutes of training per stage, default 4 and 3), CONFIG1, CONFIG2 (the
# stage configs, default configs/gpu_stage{1,2}.yaml), INIT (stage 1 starts from these weights), OUT (files that come
# back: encoder checkpoints in the official layout, logs, eval.json, contact sheet, loss curve),
# RUN_DIR (default runs/gpu), NGPU (default: all visible GPUs; >1 uses torchrun + DDP/NCCL),
# EXTRA (more --set overrides for both stages).
set -euo pipefail
cd "$(dirname "$0")/.."
WHAT=${1:-all}
MIN1=${MIN1:-4}
MIN2=${MIN2:-3}
CONFIG1=${CONFIG1:-configs/gpu_stage1.yaml}
CONFIG2=${CONFIG2:-configs/gpu_stage2.yaml}
RUN_DIR=${RUN_DIR:-runs/gpu}
OUT=${OUT:-$RUN_DIR/out}
SHARDS=${SHARDS:-.carry/shards}
mkdir -p "$RUN_DIR" "$OUT"
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}

# make `import smirk_edge.training` work: installed already, editable install, or path mapping
if $PY -c "import smirk_edge.training.trainer" 2>/dev/null; then
  MOD=("$PY" -m)
elif $PY -m pip install -q --no-deps --no-build-isolation -e . >"$RUN_DIR/pip.log" 2>&1 \
     && $PY -c "import smirk_edge.training.trainer" 2>/dev/null; then
  MOD=("$PY" -m)
else
  MOD=("$PY" training/gpu_bootstrap.py -m)
fi
NGPU=${NGPU:-$($PY -c "import torch; print(torch.cuda.device_count())")}
if [ "$NGPU" -gt 1 ]; then
  LAUNCH=("$PY" -m torch.distributed.run --standalone --nproc_per_node "$NGPU" training/gpu_bootstrap.py -m)
else
  LAUNCH=("${MOD[@]}")
fi
echo "python: $($PY --version 2>&1); launcher: ${LAUNCH[*]}; GPUs: $NGPU" | tee -a "$OUT/run.log"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee -a "$OUT/run.log" || true

export_encoder() {  # official-layout encoder-only copy (the stage-2 file with the generator is ~140 MB)
  "${MOD[@]}" smirk_edge.training.cli_export_encoder "$1" "$2"
}

stage1() {
  local init=()
  [ -n "${INIT:-}" ] && init=(--init-from "$INIT")
  "${LAUNCH[@]}" smirk_edge.training.cli train --config "$CONFIG1" --out "$RUN_DIR/stage1" \
      --max-minutes "$MIN1" --resume auto "${init[@]}" ${EXTRA:-} 2>&1 | tee -a "$OUT/run.log" | grep -v "it/s\]" || true
  cp "$RUN_DIR/stage1/log.jsonl" "$OUT/stage1_log.jsonl" || echo "stage 1 wrote no log" | tee -a "$OUT/run.log"
  export_encoder "$RUN_DIR/stage1/smirk_latest.pt" "$OUT/smirk_stage1_encoder.pt"
}

stage2() {
  "${LAUNCH[@]}" smirk_edge.training.cli train --config "$CONFIG2" --out "$RUN_DIR/stage2" \
      --init-from "$RUN_DIR/stage1/smirk_latest.pt" --max-minutes "$MIN2" --resume auto ${EXTRA:-} 2>&1 \
      | tee -a "$OUT/run.log" | grep -v "it/s\]" || true
  cp "$RUN_DIR/stage2/log.jsonl" "$OUT/stage2_log.jsonl" || echo "stage 2 wrote no log" | tee -a "$OUT/run.log"
  export_encoder "$RUN_DIR/stage2/smirk_latest.pt" "$OUT/smirk_encoder.pt"
}

evaluate() {
  local ck="$RUN_DIR/stage2/smirk_latest.pt"
  [ -f "$ck" ] || ck="$RUN_DIR/stage1/smirk_latest.pt"
  "${MOD[@]}" smirk_edge.training.cli evaluate --checkpoint "$ck" --device "${EVAL_DEVICE:-cuda}" \
      --shards "$SHARDS/expressive" --split "$SHARDS/expressive/split.json" --subset val \
      --expressive-csv "$SHARDS/expressive/expressive.csv" --synthetic "${NSYN:-512}" --out "$RUN_DIR/eval" \
      >"$RUN_DIR/eval.stdout" 2>>"$OUT/run.log" || echo "evaluation failed (see run.log)" | tee -a "$OUT/run.log"
  cp "$RUN_DIR/eval/eval.json" "$RUN_DIR/eval/contact_sheet.png" "$OUT/" 2>/dev/null || true
  "${MOD[@]}" smirk_edge.training.plot_losses "$RUN_DIR"/stage*/log.jsonl -o "$OUT/loss_curve.png" \
      >>"$OUT/run.log" 2>&1 || true
}

case "$WHAT" in
  all) stage1; stage2; evaluate ;;
  stage1) stage1 ;;
  stage2) stage2 ;;
  eval) evaluate ;;
  *) echo "usage: $0 [all|stage1|stage2|eval]" >&2; exit 2 ;;
esac
ls -la "$OUT"
