#!/usr/bin/env bash
# Issue 17: several train/fidelity.py runs (seeds x configurations) side by side on one GPU,
# then the results of all and the models of the best seed into $OUT:
#
#   FID_ARGS="--dt-min 1e-5 --dt-max 1e-3 --dt-floor 1e-5" \
#       bash train/device_fidelity.sh "s1 --seed 1" "s2 --seed 2" "s3 --seed 3"
#
# Carry [".data/train.txt.xz", ".data/dev_eval", ".data/tokenizer.json"] (take models/ out
# of the index first, see train/README.md). $OUT: fid_results.tar.gz (every run's
# result.json and run.log), fid.tar.partNN + fid.manifest.json (the chosen seed's base and
# sp models), fid.log.
# Memory: one run at batch 128 x 256 holds ~27 GB of GPU memory, so an 80 GB H100 takes two
# side by side (a third ran out of memory); an H200 takes four.
set -uo pipefail
export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
. "$(dirname "$0")/device_env.sh" corpus
PY="${PYTHON:-python3}"
root=/tmp/fid
rm -rf "$root" && mkdir -p "$root"
names=() pids=()
for spec in "$@"; do
    read -r -a words <<<"$spec"
    name=${words[0]}
    # shellcheck disable=SC2086
    (cd train && "$PY" fidelity.py --name "$name" --out "$root/$name" --data ../.data/train.txt.xz \
        --tokenizer ../.data/tokenizer.json --eval-books ../.data/dev_eval ${FID_ARGS:-} "${words[@]:1}") \
        >"$root/$name.stdout" 2>&1 &
    names+=("$name") pids+=($!)
    echo "started $name: ${words[*]:1} ${FID_ARGS:-}"
done
for i in "${!pids[@]}"; do
    wait "${pids[$i]}" || echo "run ${names[$i]} exited with $?"
done
for name in "${names[@]}"; do
    { echo "==================== $name"; tail -n 40 "$root/$name.stdout"; } >>"$OUT/fid.log"
done
"$PY" train/fidelity_report.py --runs "$root" --pack "$OUT" | tee -a "$OUT/fid.log"
tar czf "$OUT/fid_results.tar.gz" -C "$root" $(cd "$root" && ls -d */result.json */run.log *.stdout 2>/dev/null)
