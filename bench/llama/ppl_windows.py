#!/usr/bin/python3
"""recurd's perplexity over the same windows llama-perplexity scores, to check a GGUF.

    ppl_windows.py --model MODEL_DIR --ids IDS_FILE [--ctx 512] [--weights W]
                   [--recurd build/server/recurd]

IDS_FILE: the text's token ids as llama.cpp tokenizes it, e.g.
    llama-tokenize -m M.gguf -f TEXT --ids --log-disable | tr -d '[],' > IDS_FILE

llama-perplexity -c N cuts the tokens into chunks of N (no BOS: make_gguf.py writes
add_bos_token false), runs each chunk from an empty state and scores the second half:
the logits at positions N/2 .. N-2 against tokens N/2+1 .. N-1. This script has recurd
score each chunk on its own (`recurd score --tokens`) and sums the same log-probs, so
with a correct conversion both print the same running and final perplexity (up to
rounding). Standard library only.
"""

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--ids", required=True)
    ap.add_argument("--ctx", type=int, default=512, help="llama-perplexity -c (default 512)")
    ap.add_argument("--chunks", type=int, default=-1, help="llama-perplexity --chunks (default: all)")
    ap.add_argument("--weights", default="auto", help="recurd --weights (default auto)")
    ap.add_argument("--recurd", default="build/server/recurd")
    a = ap.parse_args()

    with open(a.ids) as f:
        ids = f.read().replace("[", " ").replace("]", " ").replace(",", " ").split()
    n, first = a.ctx, a.ctx // 2
    nch = len(ids) // n
    if a.chunks >= 0:
        nch = min(nch, a.chunks)
    if nch < 1:
        sys.exit(f"{a.ids}: {len(ids)} tokens, fewer than one chunk of {n}")
    nll, count, running = 0.0, 0, []
    with tempfile.TemporaryDirectory() as td:
        for k in range(nch):
            p = os.path.join(td, f"chunk{k}.txt")
            with open(p, "w") as f:
                f.write(" ".join(ids[k * n:(k + 1) * n]) + "\n")
            out = subprocess.run([a.recurd, "score", "--model", a.model, "--tokens", p, "--json",
                                  "--weights", a.weights], capture_output=True, text=True)
            if out.returncode != 0:
                sys.exit(f"recurd score failed: {out.stderr.strip()}")
            lp = json.loads(out.stdout)["token_logprobs"]  # lp[i]: log p(token i+1 | 0..i)
            if len(lp) != n - 1:
                sys.exit(f"chunk {k}: {len(lp)} log-probs, expected {n - 1}")
            sel = lp[first:n - 1]
            nll -= sum(sel)
            count += len(sel)
            running.append(math.exp(nll / count))
    print(",".join(f"[{i + 1}]{v:.4f}" for i, v in enumerate(running)))
    print(f"recurd windowed estimate: PPL = {running[-1]:.4f} over {nch} chunks of {n} "
          f"({count} scored tokens, --weights {a.weights})")


if __name__ == "__main__":
    main()
