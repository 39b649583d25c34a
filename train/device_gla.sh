#!/usr/bin/env bash
# GLA in ONE device call (train/train_gla.py): corpus encoding with the shipped tokenizer,
# pre-training at context 512 until --pre-deadline, State-Passing post-training (500 steps),
# the zero-state control if time allows, validation and position-wise perplexity, samples,
# export of models/recur-gla-sp (fla format). Stops by itself at --deadline (540 s) after start.
# Device tool: command "bash train/device_gla.sh", carry [".data/train.txt.xz", ".data/dev_eval",
# ".data/tokenizer.json"], timeout_s 590 (train/README.md "GLA" has the preparation).
# Extra arguments go to train_gla.py (e.g. --pre-deadline 300 --variants sp).
set -euo pipefail
. "$(dirname "$0")/device_env.sh" corpus
tok=.data/tokenizer.json
[ -f "$tok" ] || tok=models/recur-sp/tokenizer.json
exec "${PYTHON:-python3}" train/train_gla.py --out "$OUT" --tokenizer "$tok" "$@"
