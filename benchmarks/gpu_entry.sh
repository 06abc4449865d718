#!/usr/bin/env bash
# GPU benchmarks from a plain checkout: torch eager / CUDA graphs / torch.compile, fp32/fp16/bf16,
# channels_last, batch 1..256, GPU end to end, ONNX Runtime on the CPU cores. Rows -> $OUT/gpu_results.json.
#   benchmarks/gpu_entry.sh --quick            # < 8 minutes
#   benchmarks/gpu_entry.sh --bundle B --quick # CPU engines run B's ONNX encoders
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here/.."
export OUT="${OUT:-$PWD/gpu-results}"
PY="${PYTHON:-python3}"
exec "$PY" benchmarks/gpu_entry.py --out "$OUT" "$@"
