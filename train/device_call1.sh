#!/usr/bin/env bash
# Device call 1: tokenizer + corpus encoding + pre-training (train/call1.py).
# Device tool: command "bash train/device_call1.sh", carry [".data/train.txt.xz", ".data/dev_eval"],
# timeout_s 590. Extra arguments go to call1.py (e.g. --deadline 500).
set -euo pipefail
. "$(dirname "$0")/device_env.sh" corpus
exec "${PYTHON:-python3}" train/call1.py --out "$OUT" "$@"
