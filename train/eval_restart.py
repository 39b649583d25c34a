"""Does the state fail past the training context? The failure ratio through the C engine.

Perplexity by position mixes two things: how well the model copes with a long stream, and
how hard the text at those positions is (a book's first pages are not its middle). The
failure ratio of issue 17 separates them. For each book and each position bucket
[lo, 2lo) starting at or past the training context T = --ctx, --targets target positions t
are sampled (`failure_targets` of train/longeval.py: evenly spaced, seeded random offset),
and one `recurd score --restart-ctx T --targets FILE` predicts each x[t] twice:

  stream   by the model that has read the whole book before x[t]
  restart  from the zero state after reading EXACTLY the T tokens x[t-T : t]

ratio = exp(mean stream NLL - mean restart NLL) per bucket, the means pooled token-weighted
over the books. A model whose state fails past its training context has ratio > 1 growing
with position; ratio <= 1 means the long stream does not hurt (< 1: context beyond T helps).
The same run reports the SSM state's standard deviation after 2^k tokens and every
--state-every tokens (`recurd score --state-every`): the paper's "state norm grows" figure.

T defaults to the first model's config.json "training_context" (256 where it has none).

  /usr/bin/python3 train/eval_restart.py --recurd build/server/recurd \
      --models models/recur-base,models/recur-sp --books ../shared/data/gutenberg/dev_eval \
      --max-tokens 262144 --targets 128 --md docs/length_restart.md \
      --json docs/length_restart.json --svg docs/ppl_by_position.svg \
      --std-svg docs/state_std.svg --cache .data/restart_cache.json
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

import svgplot


def run(cmd, **kw):
    r = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({r.returncode}): {r.stderr.strip()[-1000:]}")
    return r.stdout


def book_ids(recurd, model, book, max_tokens):
    """The book's token ids through the model's tokenizer (`recurd tokenize`)."""
    with lzma.open(book, "rb") as f:
        text = f.read()
    r = subprocess.run([recurd, "tokenize", "--tokenizer", model], input=text,
                       capture_output=True)
    if r.returncode != 0:
        raise RuntimeError(f"{recurd} tokenize --tokenizer {model} failed ({r.returncode}): "
                           f"{r.stderr.decode(errors='replace').strip()[-1000:]}")
    return [int(x) for x in r.stdout.split()][:max_tokens]


def book_result(recurd, model, ids, ctx, per_bucket, seed, state_every, tmp):
    """One `recurd score` over the book: stream vs exactly-ctx restart NLL per bucket and
    the state-std trace. -> {"n_tokens", "rows": [{bucket, lo, hi, n, targets, stream_nll,
    restart_nll}], "state_std": [{pos, std, layers}]}"""
    from longeval import failure_targets   # lazy: longeval imports torch
    targets = failure_targets(len(ids), ctx, per_bucket, seed)
    ids_path, tg_path = os.path.join(tmp, "ids.txt"), os.path.join(tmp, "targets.txt")
    with open(ids_path, "w") as f:
        f.write(" ".join(map(str, ids)))
    with open(tg_path, "w") as f:
        f.write(" ".join(str(t) for ts in targets.values() for t in ts))
    out = json.loads(run([recurd, "score", "--model", model, "--tokens", ids_path, "--json",
                          "--max-details", "0", "--restart-ctx", str(ctx), "--targets", tg_path,
                          "--state-every", str(state_every)]))
    fl = out["failure"]
    assert fl["ctx"] == ctx
    by_pos = {t["pos"]: t for t in fl["targets"]}
    rows = []
    for (lo, hi), ts in sorted(targets.items()):
        got = [by_pos[t] for t in ts]           # every target was scored
        rows.append({"bucket": f"[{lo}, {hi})", "lo": lo, "hi": hi, "n": len(ts), "targets": ts,
                     "stream_nll": -sum(g["stream_logprob"] for g in got),
                     "restart_nll": -sum(g["restart_logprob"] for g in got)})
    return {"n_tokens": out["n_tokens"], "rows": rows, "state_std": out["state_std"]}


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


def mean_std(traces):
    """Mean over books of the state std at each position every book reached -> [(pos, std)]."""
    acc = {}
    for tr in traces:
        for p in tr:
            acc.setdefault(p["pos"], []).append(p["std"])
    return [(pos, sum(v) / len(v)) for pos, v in sorted(acc.items()) if len(v) == len(traces)]


def training_context(model, default=256):
    try:
        with open(os.path.join(model, "config.json")) as f:
            return int(json.load(f).get("training_context", default))
    except (OSError, ValueError):
        return default


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recurd", required=True)
    ap.add_argument("--models", required=True)
    ap.add_argument("--books", required=True, help="dir with *.txt.xz")
    ap.add_argument("--n-books", type=int, default=12)
    ap.add_argument("--max-tokens", type=int, default=262144)
    ap.add_argument("--ctx", type=int, default=0,
                    help="training context T (default: config.json training_context, else 256)")
    ap.add_argument("--targets", type=int, default=128, help="target positions per bucket per book")
    ap.add_argument("--seed", type=int, default=0, help="book i uses seed + i for its targets")
    ap.add_argument("--state-every", type=int, default=8192)
    ap.add_argument("--md", default="docs/length_restart.md")
    ap.add_argument("--json", default="docs/length_restart.json")
    ap.add_argument("--svg", default="", help="failure ratio by bucket (e.g. docs/ppl_by_position.svg)")
    ap.add_argument("--std-svg", default="", help="state std by position")
    ap.add_argument("--cache", default="", help="JSON of finished (model, book) results: a re-run "
                                                "with the same settings skips them")
    a = ap.parse_args(argv)
    books = sorted(glob.glob(os.path.join(a.books, "*.txt.xz")))[:a.n_books]
    if not books:
        sys.exit(f"no books in {a.books}")
    models = [m for m in a.models.split(",") if m]
    ctx = a.ctx or training_context(models[0])
    key = f"ctx={ctx} targets={a.targets} seed={a.seed} max={a.max_tokens} every={a.state_every}"
    cache = {}
    if a.cache and os.path.exists(a.cache):
        with open(a.cache) as f:
            cache = json.load(f)
        if cache.get("key") != key:
            cache = {}
    cache["key"] = key
    res, std = {}, {}
    with tempfile.TemporaryDirectory(prefix="recur_restart_") as tmp:
        for m in models:
            label = os.path.basename(os.path.normpath(m))
            res[label], std[label] = [], []
            for i, b in enumerate(books):
                name = os.path.basename(b)
                ck = f"{os.path.abspath(m)}|{name}"
                if ck not in cache:
                    ids = book_ids(a.recurd, m, b, a.max_tokens)
                    cache[ck] = book_result(a.recurd, m, ids, ctx, a.targets, a.seed + i,
                                            a.state_every, tmp)
                    if a.cache:
                        with open(a.cache + ".tmp", "w") as f:
                            json.dump(cache, f)
                        os.replace(a.cache + ".tmp", a.cache)
                r = cache[ck]
                res[label] += [{"book": name, **row} for row in r["rows"]]
                std[label].append(r["state_std"])
                print(f"{label} {name}: {r['n_tokens']} tokens", flush=True)
    pooled = {label: pool(rows) for label, rows in res.items()}
    mstd = {label: mean_std(tr) for label, tr in std.items()}
    order = sorted({b for p in pooled.values() for b in p}, key=lambda s: int(s[1:].split(",")[0]))
    lines = ["# Failure ratio: stream vs restart after exactly T tokens", "",
             f"For {a.targets} sampled target positions t per book in each bucket starting at or "
             f"past the training context T = {ctx}, the token x[t] is predicted twice by one "
             f"`recurd score --restart-ctx {ctx} --targets FILE`: by the model that has read the "
             "book from its start (stream), and by the model restarted from the zero state that "
             f"has read exactly the {ctx} tokens x[t-{ctx}:t] (restart). NLLs pooled "
             "token-weighted over the books; ratio = exp(mean stream NLL - mean restart NLL). "
             "Ratio > 1 growing with position is the state failing; <= 1 means the long stream "
             f"does not hurt. First {a.max_tokens} tokens of {len(books)} evaluation books. "
             "Made by `train/eval_restart.py`.", "",
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
    lines += ["", "## State standard deviation by position", "",
              "Standard deviation of every SSM state float (all layers) after p tokens "
              f"(`recurd score --state-every {a.state_every}`), mean over the books that reach p.",
              "", "| p | " + " | ".join(res) + " |", "|---|" + "---|" * len(res)]
    allpos = sorted({p for v in mstd.values() for p, _ in v})
    show = [p for p in allpos if p >= 16 and (p & (p - 1) == 0 or p == allpos[-1])]
    for p in show:
        cells = [next((f"{s:.4f}" for q, s in mstd[l] if q == p), "-") for l in res]
        lines.append(f"| {p} | " + " | ".join(cells) + " |")
    far = [b for b in order if int(b[1:].split(",")[0]) >= 16384]
    if far:
        lines += ["", "## By book", "",
                  "Failure ratio of each book in the buckets at or past 16384 (the means "
                  "above pool these token-weighted).", "",
                  "| book | " + " | ".join(f"{l} {b}" for l in res for b in far) + " |",
                  "|---|" + "---|" * (len(res) * len(far))]
        for b in books:
            name = os.path.basename(b)
            cells = []
            for label in res:
                got = {r["bucket"]: r for r in res[label] if r["book"] == name}
                cells += [f"{math.exp((got[k]['stream_nll'] - got[k]['restart_nll']) / got[k]['n']):.3f}"
                          if k in got else "-" for k in far]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    with open(a.md, "w") as f:
        f.write("\n".join(lines) + "\n")
    with open(a.json, "w") as f:
        json.dump({"ctx": ctx, "targets": a.targets, "seed": a.seed, "max_tokens": a.max_tokens,
                   "books": [os.path.basename(b) for b in books],
                   "pooled": {label: {b: {"stream_ppl": v[0], "restart_ppl": v[1], "ratio": v[2],
                                          "books": v[3], "n": v[4]} for b, v in p.items()}
                              for label, p in pooled.items()},
                   "state_std_mean": {label: [{"pos": p, "std": s} for p, s in v]
                                      for label, v in mstd.items()},
                   # per-book sums without the target lists (failure_targets(n, ctx,
                   # targets, seed + book index) gives them again; --cache keeps them)
                   "per_book": {label: [{k: v for k, v in r.items() if k != "targets"}
                                        for r in rows] for label, rows in res.items()}},
                  f, indent=None, separators=(",", ":"))
    if a.svg:
        series = [{"label": label, "points": [(int(b[1:].split(",")[1][:-1]), v[2])
                                              for b, v in p.items()]}
                  for label, p in pooled.items()]
        svgplot.line_plot(a.svg, series, f"Failure ratio by position ({len(books)} books)",
                          "position (bucket end, tokens)",
                          "stream / restart-after-T perplexity", log2x=True,
                          vlines=[(ctx, f"training context {ctx}")],
                          hlines=[(1.0, "no failure"), (1.05, "1.05"), (1.5, "1.5")],
                          yspan=(0.95, 1.1))
    if a.std_svg:
        series = [{"label": label, "points": [(p, s) for p, s in v if p >= 16]}
                  for label, v in mstd.items()]
        svgplot.line_plot(a.std_svg, series, "SSM state standard deviation by position",
                          "tokens read", "std of the state (all layers)", log2x=True,
                          vlines=[(ctx, f"training context {ctx}")])
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
