#!/usr/bin/env bash
# Pre-training and post-training in ONE device call (when device time allows a single call):
# pretrain_base.py until PRE_DEADLINE seconds after the start, then posttrain_state_passing.py on its model until
# call 2's own --deadline (same clock). Carry [".data/train.txt.xz", ".data/dev_eval",
# ".data/tokenizer.json"] (the tokenizer keeps the shipped vocabulary; the full corpus feeds
# both stages). $OUT gets call 2's files (call2.tar.partNN, manifest, summary.json) and
# call1.log; call 1's model travels inside call 2's tar as models/recur-base.
#
#   PRE_ARGS="--ctx 256 --batch 128 --dt-min 1e-4 --dt-max 1e-2" PRE_DEADLINE=370 \
#       bash train/device_onecall.sh --variants sp,zero --deadline 520
set -euo pipefail
. "$(dirname "$0")/device_env.sh" corpus
PY="${PYTHON:-python3}"
tok=()
[ -f .data/tokenizer.json ] && tok=(--tokenizer .data/tokenizer.json)
o1="$(mktemp -d /tmp/recur_o1.XXXXXX)"
# shellcheck disable=SC2086
OUT="$o1" bash train/device_pretrain_base.sh "${tok[@]}" --deadline "${PRE_DEADLINE:-370}" ${PRE_ARGS:-} \
    || echo "call 1 exited with $? (continuing with its last checkpoint, if any)"
rm -rf .data/call1
"$PY" train/pack.py unpack --from "$o1" --name call1 --to .data/call1
rc=0
bash train/device_posttrain_state_passing.sh --call1 .data/call1 --data .data/train.txt.xz "$@" || rc=$?
cp .data/call1/call1.log "$OUT/call1.log" || true
exit $rc
