#!/usr/bin/env bash
# Device call 2: State-Passing post-training (+ variants), export, parity, samples (train/call2.py).
# Device tool: command "bash train/device_call2.sh", carry [".data/call1", ".data/post.txt.xz",
# ".data/dev_eval"], timeout_s 590. Extra arguments go to call2.py (e.g. --variants sp,tbtt).
set -euo pipefail
: "${OUT:?OUT is not set: run this through the device tool, or export OUT=some/dir}"
export RECUR_T0="${RECUR_T0:-$(date +%s)}" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
cd "$(dirname "$0")/.."
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
exec "${PYTHON:-python3}" train/call2.py --out "$OUT" "$@"
