#!/usr/bin/env bash
# Miniature end-to-end dry run of both device calls on the CPU (torch 1.13 is enough):
# tiny model, a slice of the corpus, mock tokenizer/transformers where those are absent.
# It copies train/ into a scratch "checkout" exactly as the device tool copies the tree,
# runs device_pretrain_base.sh, unpacks call 1's $OUT into .data/call1 as the lead would, makes
# the call-2 corpus subset, runs device_posttrain_state_passing.sh and unpacks call 2.
#   usage: train/dryrun.sh [SCRATCH_DIR]        (PYTHON defaults to /usr/bin/python3)
set -euo pipefail
export PYTHON="${PYTHON:-/usr/bin/python3}"
SRC="$(cd "$(dirname "$0")" && pwd)"
ROOT="${1:-$(mktemp -d /tmp/recur_dry.XXXXXX)}"
MOCK="${DRY_MOCK---mock-hf}"   # set DRY_MOCK= (empty) to use real tokenizers/transformers
rm -rf "$ROOT/train" "$ROOT/.data" "$ROOT/out1" "$ROOT/out2" "$ROOT/repo"
mkdir -p "$ROOT/train"
cp "$SRC"/*.py "$SRC"/*.sh "$ROOT/train/"
"$PYTHON" -c "import sys; sys.path.insert(0, '$SRC/tests'); import dry_data; dry_data.make('$ROOT')"
cd "$ROOT"
TINY="--d-model 64 --n-layer 2 --d-state 16 --headdim 16 --chunk 16"
# DRY_KILL1=N: SIGKILL call 1 after N seconds (a run cut short must still hand over a model)
KILL1=()
[ -n "${DRY_KILL1:-}" ] && KILL1=(timeout -s KILL "$DRY_KILL1")
OUT="$ROOT/out1" "${KILL1[@]}" bash train/device_pretrain_base.sh $MOCK $TINY --ctx 32 --batch 8 --n-val 3 \
    --deadline "${DRY_DEADLINE1:-25}" --reserve 6 --long-eval-min-left 0 --log-every 25 --eval-every 100 --ckpt-every 5 \
    --val-windows 16 --warmup 20 --long-eval-tokens 2048 --tok-bytes 1e5 --vocab 512 \
    || [ -n "${DRY_KILL1:-}" ]
ls -l out1
"$PYTHON" train/pack.py unpack --from out1 --name call1 --to .data/call1
"$PYTHON" train/corpus.py subset --src .data/train.txt.xz --out .data/post.txt.xz --max-bytes 1.5e5 --n-val 3
OUT="$ROOT/out2" bash train/device_posttrain_state_passing.sh $MOCK --post-steps 30 --post-warmup 5 \
    --deadline "${DRY_DEADLINE2:-60}" --reserve 15 --log-every 10 --long-eval-tokens 2048 \
    --parity-tokens 96 --effrem-T 64,256 --effrem-points 4 --effrem-books 2
ls -l out2
"$PYTHON" train/pack.py unpack --from out2 --name call2 --to repo
echo "DRY RUN OK: $ROOT"
