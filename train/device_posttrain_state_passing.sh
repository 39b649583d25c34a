#!/usr/bin/env bash
# Device call 2: State-Passing post-training (+ variants), export, parity, samples (train/posttrain_state_passing.py).
# Device tool: command "bash train/device_posttrain_state_passing.sh", carry [".data/call1", ".data/post.txt.xz",
# ".data/dev_eval"], timeout_s 590. Extra arguments go to posttrain_state_passing.py (e.g. --variants sp,tbtt).
set -euo pipefail
. "$(dirname "$0")/device_env.sh"
exec "${PYTHON:-python3}" train/posttrain_state_passing.py --out "$OUT" "$@"
