"""Is a rise in perplexity at late positions the state failing, or harder text?

Perplexity by position mixes two things: how well the model copes with a long stream, and
how hard the text at those positions is (a book's first pages are not its middle). This
script separates them through the C engine. For each book and each position bucket
[a, b) past the training context it scores the same L = min(b - a, --window) tokens twice:

  stream   the model has read the book from its start (one `recurd score` over the whole
           prefix; the per-token log-probs of x[a : a+L])
  restart  the model starts from the zero state at a - ctx, i.e. it sees only the
           training context's worth of text before x[a] (`recurd score` over
           x[a-ctx : a+L], log-probs of its last L tokens)

ratio = ppl(stream) / ppl(restart) on identical tokens. A model that fails past its
training context has ratio > 1 that grows with a; ratio <= 1 means the long stream does
not hurt (and < 1 that the long context helps).

  /usr/bin/python3 train/eval_restart.py --recurd build/server/recurd \
      --models models/recur-base,models/recur-sp --books ../shared/data/gutenberg/dev_eval \
      --max-tokens 131072 --md docs/length_restart.md --json docs/length_restart.json
"""
import argparse
import glob
import json
import lzma
import math
import os
import subprocess
import sys
import tempfile


def run(cmd, **kw):
    r = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {r.stderr.strip()[-1000:]}")
    return r.stdout


def logprobs(recurd, model, ids, path):
    """Per-token log-probs of ids[1:] from the zero state."""
    with open(path, "w") as f:
        f.write(" ".join(map(str, ids)))
    out = json.loads(run([recurd, "score", "--model", model, "--tokens", path, "--json",
                          "--max-details", str(len(ids))]))
    lp = out["token_logprobs"]
    assert len(lp) == len(ids) - 1
    return lp


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recurd", required=True)
    ap.add_argument("--models", required=True)
    ap.add_argument("--books", required=True, help="dir with *.txt.xz")
    ap.add_argument("--n-books", type=int, default=12)
    ap.add_argument("--max-tokens", type=int, default=131072)
    ap.add_argument("--ctx", type=int, default=256)
    ap.add_argument("--window", type=int, default=2048)
    ap.add_argument("--md", default="docs/length_restart.md")
    ap.add_argument("--json", default="docs/length_restart.json")
    a = ap.parse_args(argv)
    books = sorted(glob.glob(os.path.join(a.books, "*.txt.xz")))[:a.n_books]
    if not books:
        sys.exit(f"no books in {a.books}")
    models = [m for m in a.models.split(",") if m]
    res = {}
    with tempfile.TemporaryDirectory(prefix="recur_restart_") as tmp:
        for m in models:
            label = os.path.basename(os.path.normpath(m))
            per = {}
            for b in books:
                name = os.path.basename(b)
                txt = os.path.join(tmp, "book.txt")
                with lzma.open(b, "rb") as f, open(txt, "wb") as g:
                    g.write(f.read())
                ids = [int(x) for x in run([a.recurd, "tokenize", "--tokenizer", m],
                                           stdin=open(txt, "rb")).split()][:a.max_tokens]
                stream = logprobs(a.recurd, m, ids, os.path.join(tmp, "ids.txt"))
                k = a.ctx  # buckets [ctx, 2ctx), [2ctx, 4ctx), ...
                while k < len(ids):
                    lo, hi = k, min(2 * k, len(ids))
                    L = min(hi - lo, a.window)
                    # stream: prediction of token t is stream[t-1]
                    s_nll = -sum(stream[t - 1] for t in range(lo, lo + L))
                    win = ids[lo - a.ctx: lo + L]
                    r = logprobs(a.recurd, m, win, os.path.join(tmp, "win.txt"))
                    r_nll = -sum(r[-L:])
                    per.setdefault(f"[{lo}, {2 * k})", []).append(
                        {"book": name, "n": L, "stream_nll": s_nll, "restart_nll": r_nll})
                    k *= 2
                print(f"{label} {name}: {len(ids)} tokens", flush=True)
            res[label] = per
    rows = {}
    for label, per in res.items():
        for bucket, xs in per.items():
            n = sum(x["n"] for x in xs)
            sp = math.exp(sum(x["stream_nll"] for x in xs) / n)
            rp = math.exp(sum(x["restart_nll"] for x in xs) / n)
            rows.setdefault(bucket, {})[label] = (sp, rp, sp / rp, len(xs), n)
    order = sorted(rows, key=lambda s: int(s[1:].split(",")[0]))
    lines = ["# Stream vs restart: does the long stream hurt?", "",
             f"For each bucket past the training context ({a.ctx} tokens), the same tokens "
             f"(at most {a.window} per book, the bucket's first) are scored twice through "
             "`recurd score`: by the model that has read the book from its start (stream), "
             f"and by the model restarted from the zero state {a.ctx} tokens before them "
             "(restart). Perplexities pooled over the books; ratio = stream / restart. "
             "Ratio > 1 growing with position would be the state failing; <= 1 means the "
             f"long stream does not hurt. First {a.max_tokens} tokens of {len(books)} "
             "evaluation books. Made by `train/eval_restart.py`.", "",
             "| positions | " + " | ".join(f"{l} stream | {l} restart | {l} ratio"
                                           for l in res) + " |",
             "|---|" + "---|---|---|" * len(res)]
    for bucket in order:
        cells = []
        for label in res:
            sp, rp, ratio, nb, n = rows[bucket][label]
            cells.append(f"{sp:.2f} | {rp:.2f} | {ratio:.3f}")
        lines.append(f"| {bucket} | " + " | ".join(cells) + " |")
    with open(a.md, "w") as f:
        f.write("\n".join(lines) + "\n")
    with open(a.json, "w") as f:
        json.dump({"ctx": a.ctx, "window": a.window, "max_tokens": a.max_tokens,
                   "books": [os.path.basename(b) for b in books], "per_book": res}, f, indent=1)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
