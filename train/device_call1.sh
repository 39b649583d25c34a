#!/usr/bin/env bash
# Device call 1: tokenizer + corpus encoding + pre-training (train/call1.py).
# Device tool: command "bash train/device_call1.sh", carry [".data/train.txt.xz", ".data/dev_eval"],
# timeout_s 590. Extra arguments go to call1.py (e.g. --deadline 500).
set -euo pipefail
: "${OUT:?OUT is not set: run this through the device tool, or export OUT=some/dir}"
export RECUR_T0="${RECUR_T0:-$(date +%s)}" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
cd "$(dirname "$0")/.."
[ -f .data/train.txt.xz ] || { echo "FATAL: .data/train.txt.xz missing (carry it)"; exit 2; }
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
exec "${PYTHON:-python3}" train/call1.py --out "$OUT" "$@"
