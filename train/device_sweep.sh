#!/usr/bin/env bash
# Several pre-trainings (train/pretrain_base.py) at once on one GPU, each with its own arguments:
#
#   bash train/device_sweep.sh "NAME1 --ctx 64 --batch 512" "NAME2 --ctx 64 --dt-min 1e-4" ...
#
# Each run writes $OUT/NAME/{call1.tar.partNN, call1.manifest.json} (unpack with
# `train/pack.py unpack --from <files_at>/NAME --name call1 --to .data/NAME`); the logs and
# summaries of all runs are concatenated into $OUT/sweep.log, so that two runs stay within the
# device tool's eight returned files. Common arguments: SWEEP_ARGS (e.g. "--deadline 545
# --tokenizer .data/tokenizer.json"). A small model leaves the GPU mostly idle between
# kernels, so runs side by side cost far less than one after the other.
set -uo pipefail
. "$(dirname "$0")/device_env.sh" corpus
names=() pids=()
for spec in "$@"; do
    read -r -a words <<<"$spec"
    name=${words[0]}
    mkdir -p "$OUT/$name"
    # shellcheck disable=SC2086
    "${PYTHON:-python3}" train/pretrain_base.py --out "$OUT/$name" ${SWEEP_ARGS:-} "${words[@]:1}" \
        >"$OUT/$name.stdout" 2>&1 &
    names+=("$name") pids+=($!)
    echo "started $name (pid $!): ${words[*]:1} ${SWEEP_ARGS:-}"
done
rc=0
for i in "${!pids[@]}"; do
    wait "${pids[$i]}" || { echo "run ${names[$i]} exited with $?"; rc=1; }
done
for name in "${names[@]}"; do
    { echo "==================== $name"; cat "$OUT/$name.stdout";
      echo "---- summary.json"; cat "$OUT/$name/summary.json" 2>/dev/null; echo; } >>"$OUT/sweep.log"
    rm -f "$OUT/$name.stdout" "$OUT/$name/call1.log" "$OUT/$name/summary.json"
done
grep -h -A30 "perplexity by position\|==== call 1 summary" "$OUT/sweep.log" | cut -c1-160
exit $rc
