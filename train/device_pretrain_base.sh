#!/usr/bin/env bash
# Device call 1: tokenizer + corpus encoding + pre-training (train/pretrain_base.py).
# Device tool: command "bash train/device_pretrain_base.sh", carry [".data/train.txt.xz", ".data/dev_eval"],
# timeout_s 590. Extra arguments go to pretrain_base.py (e.g. --deadline 500).
set -euo pipefail
. "$(dirname "$0")/device_env.sh" corpus
exec "${PYTHON:-python3}" train/pretrain_base.py --out "$OUT" "$@"
