"""Is a rise in perplexity at late positions the state failing, or harder text?

Perplexity by position mixes two things: how well the model copes with a long stream, and
how hard the text at those positions is (a book's first pages are not its middle). This
script separates them through the C engine with the exactly-T baseline of issue 17. For
each book and each position bucket [lo, 2lo) starting at or past the training context
T = --ctx, it samples --targets target positions t (`failure_targets` of train/longeval.py:
evenly spaced, seeded random offset) and predicts the same token x[t] twice:

  stream   the model has read the whole book before x[t] (one `recurd score` over the
           book; the log-prob of x[t] is the stream's token_logprobs[t-1])
  restart  the model starts from the zero state and reads EXACTLY the T tokens
           x[t-T : t] (one `recurd score` over the window x[t-T : t+1] of T+1 tokens; the
           last of its token_logprobs is x[t]'s)

ratio = exp(mean stream NLL - mean restart NLL) per bucket, the means pooled token-weighted
over the books (every book gives the same targets per bucket, fewer only where a short
bucket has fewer tokens). A model whose state fails past its training context has ratio > 1
growing with position; ratio <= 1 means the long stream does not hurt (and < 1 that the
context beyond T helps).

  /usr/bin/python3 train/eval_restart.py --recurd build/server/recurd \
      --models models/recur-base,models/recur-sp --books ../shared/data/gutenberg/dev_eval \
      --max-tokens 131072 --targets 64 --md docs/length_restart.md --json docs/length_restart.json
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


def book_rows(recurd, model, ids, ctx, per_bucket, seed, tmp):
    """Stream vs exactly-ctx restart NLL sums per bucket for one book's ids.
    -> [{"bucket", "lo", "hi", "n", "targets", "stream_nll", "restart_nll"}]"""
    from longeval import failure_targets   # lazy: longeval imports torch
    stream = logprobs(recurd, model, ids, os.path.join(tmp, "ids.txt"))
    targets = failure_targets(len(ids), ctx, per_bucket, seed)
    # all restart windows of the book, each exactly ctx+1 tokens x[t-ctx : t+1]
    wins = []
    for (lo, hi), ts in targets.items():
        for t in ts:
            assert ctx <= t < len(ids)
            path = os.path.join(tmp, f"win_{t}.txt")
            wins.append((lo, hi, t, ids[t - ctx: t + 1], path))
    rows = {}
    for lo, hi, t, win, path in wins:
        r = logprobs(recurd, model, win, path)[-1]     # log p(x[t] | x[t-ctx:t]), zero state
        row = rows.setdefault((lo, hi), {"bucket": f"[{lo}, {hi})", "lo": lo, "hi": hi, "n": 0,
                                         "targets": [], "stream_nll": 0.0, "restart_nll": 0.0})
        row["n"] += 1
        row["targets"].append(t)
        row["stream_nll"] -= stream[t - 1]
        row["restart_nll"] -= r
    return [rows[k] for k in sorted(rows)]


def pool(rows):
    """Token-weighted pooling of per-book rows of one model -> {bucket: (sp, rp, ratio, books, n)}."""
    out = {}
    for bucket in sorted({r["bucket"] for r in rows}, key=lambda s: int(s[1:].split(",")[0])):
        xs = [r for r in rows if r["bucket"] == bucket]
        n = sum(x["n"] for x in xs)
        s = sum(x["stream_nll"] for x in xs) / n
        q = sum(x["restart_nll"] for x in xs) / n
        out[bucket] = (math.exp(s), math.exp(q), math.exp(s - q), len(xs), n)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recurd", required=True)
    ap.add_argument("--models", required=True)
    ap.add_argument("--books", required=True, help="dir with *.txt.xz")
    ap.add_argument("--n-books", type=int, default=12)
    ap.add_argument("--max-tokens", type=int, default=131072)
    ap.add_argument("--ctx", type=int, default=256, help="training context T")
    ap.add_argument("--targets", type=int, default=64, help="target positions per bucket per book")
    ap.add_argument("--seed", type=int, default=0, help="book i uses seed + i for its targets")
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
            res[label] = []
            for i, b in enumerate(books):
                name = os.path.basename(b)
                txt = os.path.join(tmp, "book.txt")
                with lzma.open(b, "rb") as f, open(txt, "wb") as g:
                    g.write(f.read())
                with open(txt, "rb") as f:
                    ids = [int(x) for x in run([a.recurd, "tokenize", "--tokenizer", m],
                                               stdin=f).split()][:a.max_tokens]
                bdir = os.path.join(tmp, f"{label}_{i}")
                os.makedirs(bdir)
                for r in book_rows(a.recurd, m, ids, a.ctx, a.targets, a.seed + i, bdir):
                    res[label].append({"book": name, **r})
                print(f"{label} {name}: {len(ids)} tokens", flush=True)
    pooled = {label: pool(rows) for label, rows in res.items()}
    order = sorted({b for p in pooled.values() for b in p}, key=lambda s: int(s[1:].split(",")[0]))
    lines = ["# Stream vs restart: does the long stream hurt?", "",
             f"For up to {a.targets} sampled target positions t per book in each bucket starting "
             f"at or past the training context T = {a.ctx}, the token x[t] is predicted twice "
             "through `recurd score`: by the model that has read the book from its start "
             f"(stream), and by the model restarted from the zero state that has read exactly "
             f"the {a.ctx} tokens x[t-{a.ctx}:t] (restart). NLLs pooled token-weighted over the "
             "books; ratio = exp(mean stream NLL - mean restart NLL). Ratio > 1 growing with "
             "position would be the state failing; <= 1 means the long stream does not hurt. "
             f"First {a.max_tokens} tokens of {len(books)} evaluation books. Made by "
             "`train/eval_restart.py`.", "",
             "| positions | " + " | ".join(f"{l} stream | {l} restart | {l} ratio"
                                           for l in res) + " |",
             "|---|" + "---|---|---|" * len(res)]
    for bucket in order:
        cells = []
        for label in res:
            if bucket in pooled[label]:
                sp, rp, ratio, nb, n = pooled[label][bucket]
                cells.append(f"{sp:.2f} | {rp:.2f} | {ratio:.3f}")
            else:
                cells.append("- | - | -")
        lines.append(f"| {bucket} | " + " | ".join(cells) + " |")
    with open(a.md, "w") as f:
        f.write("\n".join(lines) + "\n")
    with open(a.json, "w") as f:
        json.dump({"ctx": a.ctx, "targets": a.targets, "seed": a.seed, "max_tokens": a.max_tokens,
                   "books": [os.path.basename(b) for b in books],
                   "pooled": {label: {b: {"stream_ppl": v[0], "restart_ppl": v[1], "ratio": v[2],
                                          "books": v[3], "n": v[4]} for b, v in p.items()}
                              for label, p in pooled.items()},
                   "per_book": res}, f, indent=1)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
