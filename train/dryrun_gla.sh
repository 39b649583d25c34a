#!/usr/bin/env bash
# Miniature end-to-end dry run of train/device_gla.sh on the CPU: a tiny GLA, a slice of the
# corpus, the shipped tokenizer.json read by the mock byte tokenizer (or, with DRY_MOCK= and
# PYTHONPATH=train/tests/stubs, through the HF code path against the stubs). It copies train/
# into a scratch "checkout" as the device tool copies the tree, runs the device script with
# short deadlines and unpacks its $OUT as the lead would.
#   usage: train/dryrun_gla.sh [SCRATCH_DIR]        (PYTHON defaults to /usr/bin/python3)
set -euo pipefail
export PYTHON="${PYTHON:-/usr/bin/python3}"
SRC="$(cd "$(dirname "$0")" && pwd)"
ROOT="${1:-$(mktemp -d /tmp/recur_gla_dry.XXXXXX)}"
MOCK="${DRY_MOCK---mock-hf}"
rm -rf "$ROOT/train" "$ROOT/.data" "$ROOT/out" "$ROOT/repo"
mkdir -p "$ROOT/train"
cp "$SRC"/*.py "$SRC"/*.sh "$ROOT/train/"
"$PYTHON" -c "import sys; sys.path.insert(0, '$SRC/tests'); import dry_data; dry_data.make('$ROOT')"
cp "${DRY_TOKENIZER:-$SRC/../models/recur-sp/tokenizer.json}" "$ROOT/.data/tokenizer.json"
cd "$ROOT"
TINY="--hidden 32 --layers 2 --heads 2 --chunk 16 --sub-chunk 4 --ctx 64 --batch 8 --n-val 3"
# DRY_KILL=N: SIGKILL the device script after N seconds (a run cut short must still hand over a model)
KILL=()
[ -n "${DRY_KILL:-}" ] && KILL=(timeout -s KILL "$DRY_KILL")
OUT="$ROOT/out" "${KILL[@]}" bash train/device_gla.sh $MOCK $TINY --pre-deadline "${DRY_PRE:-20}" \
    --deadline "${DRY_DEADLINE:-60}" --reserve 8 --warmup 10 --post-steps 20 --post-warmup 5 \
    --log-every 10 --eval-every 50 --ckpt-every 6 --val-windows 8 --long-eval-tokens 4096 \
    --long-eval-seg 1024 --min-pre 5 --post-overhead 6 ${DRY_ARGS:-} || [ -n "${DRY_KILL:-}" ]
ls -l out
"$PYTHON" train/pack.py unpack --from out --name gla --to repo
echo "GLA DRY RUN OK: $ROOT"
