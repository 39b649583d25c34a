"""Figure 1 through the C engine: perplexity by position on the evaluation books.

Runs `recurd score --model DIR --text FILE --json` for every (model, book) pair (books
are decompressed into a temp dir, never into the repo), aggregates the position buckets
over books (mean of per-book perplexities, and pooled over all predictions), checks the
targets, and writes a markdown table, an SVG plot and (optionally) the models' cards.

  /usr/bin/python3 train/eval_books.py --recurd build/server/recurd \
      --models models/recur-base,models/recur-sp --books ../shared/data/gutenberg/dev_eval \
      --ctx 256 --md docs/length_generalisation.md --svg docs/ppl_mean_by_position.svg \
      --cache build/eval_books.json --update-cards

recurd's JSON: {"n_tokens","nll","ppl","token_logprobs":[...],
                "buckets":[{"start","end","n","ppl"}, ...]}
Targets (issue 5): the State-Passing model's perplexity in [131072, 262144) is at most
1.05x its perplexity in the bucket just below the training context, and no bucket past
the context is worse than that; the base model is expected to degrade past the context.
"""
import argparse
import glob
import json
import lzma
import math
import os
import shlex
import subprocess
import sys
import tempfile
import time

import export
import svgplot

LAST = (131072, 262144)


def score_book(recurd, model, path, extra, mode="text"):
    cmd = [recurd, "score", "--model", model, f"--{mode}", path, "--json"] + extra
    t = time.time()
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(map(shlex.quote, cmd))} failed ({r.returncode}): "
                           f"{r.stderr.strip()[-2000:]}")
    j = json.loads(r.stdout)
    buckets = [{k: b[k] for k in ("start", "end", "n", "ppl")} for b in j["buckets"] if b["n"] > 0]
    return {"n_tokens": j["n_tokens"], "ppl": j["ppl"], "buckets": buckets,
            "seconds": time.time() - t}


def write_ids(src, dst, max_tokens=0):
    """*.u16 (uint16 little-endian) or *.ids (whitespace) -> whitespace-separated ids."""
    if src.endswith(".u16"):
        import numpy as np
        ids = np.fromfile(src, dtype="<u2").tolist()
    else:
        with open(src) as f:
            ids = [int(x) for x in f.read().split()]
    if max_tokens:
        ids = ids[:max_tokens]
    with open(dst, "w") as f:
        f.write(" ".join(map(str, ids)) + "\n")


def aggregate(per_book):
    """per_book: {book: {"buckets": [...]}} -> rows sorted by start:
    {start, end, books, n, ppl_mean, ppl_pooled}."""
    acc = {}
    for res in per_book.values():
        for b in res["buckets"]:
            if b["n"] <= 0:
                continue
            r = acc.setdefault((b["start"], b["end"]), {"ppls": [], "n": 0, "nll": 0.0})
            r["ppls"].append(b["ppl"])
            r["n"] += b["n"]
            r["nll"] += b["n"] * math.log(b["ppl"])
    return [{"start": a, "end": e, "books": len(r["ppls"]), "n": r["n"],
             "ppl_mean": sum(r["ppls"]) / len(r["ppls"]), "ppl_pooled": math.exp(r["nll"] / r["n"])}
            for (a, e), r in sorted(acc.items())]


def check_targets(rows, ctx, tol=1.05, last=LAST):
    """-> dict: reference bucket (just below ctx), last bucket, worst bucket past ctx."""
    by = {(r["start"], r["end"]): r for r in rows}
    ref = next((r for r in rows if r["end"] == ctx), None)
    if ref is None:
        return {"ok": False, "reason": f"no bucket ending at the training context {ctx}"}
    past = [r for r in rows if r["start"] >= ctx and r["end"] <= last[1]]
    out = {"ref_bucket": [ref["start"], ref["end"]], "ref_ppl": ref["ppl_mean"], "tol": tol}
    lb = by.get(last)
    out["last_bucket"] = list(last)
    out["last_ppl"] = lb["ppl_mean"] if lb else None
    out["last_ratio"] = lb["ppl_mean"] / ref["ppl_mean"] if lb else None
    if past:
        worst = max(past, key=lambda r: r["ppl_mean"])
        out["worst_bucket"] = [worst["start"], worst["end"]]
        out["worst_ratio"] = worst["ppl_mean"] / ref["ppl_mean"]
    else:
        out["worst_ratio"] = None
    out["ok"] = bool(lb) and out["last_ratio"] <= tol and out["worst_ratio"] <= tol
    if not lb:
        out["reason"] = f"no predictions in [{last[0]}, {last[1]})"
    return out


HAND = "<!-- written by hand below; kept when this script rewrites the file -->"


def by_book_md(per_model, ctx, tol=1.05, last=LAST):
    """Each book's last bucket against its own bucket just below the context:
    the targets are means over books, and the books differ."""
    labels = list(per_model)
    books = sorted({b for per in per_model.values() for b in per})
    head = ["book"] + [f"{l}: [{ctx // 2}, {ctx}) / [{last[0]}, {last[1]}) / ratio" for l in labels]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    within = dict.fromkeys(labels, 0)
    for b in books:
        cells = [b]
        for l in labels:
            bk = {(x["start"], x["end"]): x for x in per_model[l].get(b, {}).get("buckets", [])}
            ref, lb = bk.get((ctx // 2, ctx)), bk.get(tuple(last))
            if not ref or not lb or not ref["n"] or not lb["n"]:
                cells.append("n/a")
                continue
            ratio = lb["ppl"] / ref["ppl"]
            within[l] += ratio <= tol
            cells.append(f"{ref['ppl']:.1f} / {lb['ppl']:.1f} / {ratio:.2f}")
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("| within " + f"{tol}x | " + " | ".join(f"{within[l]} of {len(books)} books"
                                                       for l in labels) + " |")
    return "\n".join(lines)


def table_md(agg, ctx):
    names = list(agg)
    keys = sorted({(r["start"], r["end"]) for rows in agg.values() for r in rows})
    head = "| positions | " + " | ".join(f"{n} (mean) | {n} (pooled)" for n in names) + " |"
    lines = [head, "|---|" + "---|---|" * len(names)]
    for k in keys:
        cells = []
        for n in names:
            r = next((r for r in agg[n] if (r["start"], r["end"]) == k), None)
            cells += [f"{r['ppl_mean']:.2f}", f"{r['ppl_pooled']:.2f}"] if r else ["", ""]
        mark = " (last inside training ctx)" if k[1] == ctx else ""
        lines.append(f"| [{k[0]}, {k[1]}){mark} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(agg, ctx, path, title):
    series = [{"label": n, "points": [(r["end"], r["ppl_mean"]) for r in rows]}
              for n, rows in agg.items()]
    svgplot.line_plot(path, series, title, "position (bucket end, tokens)",
                      "perplexity (mean over books)", log2x=True, ylog=True,
                      vlines=[(ctx, f"training context {ctx}")])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recurd", required=True, help="path to the recurd binary")
    ap.add_argument("--models", required=True, help="comma-separated model dirs")
    ap.add_argument("--books", help="dir with *.txt.xz (dev_eval): scored with --text")
    ap.add_argument("--ids", help="instead of --books: dir with *.u16 (uint16 LE token ids, as "
                    "call 2 writes under data/dev_eval_ids/) or *.ids (whitespace-separated), "
                    "scored with `recurd score --tokens`")
    ap.add_argument("--max-tokens", type=int, default=0, help="with --ids: keep the first N")
    ap.add_argument("--ctx", type=int, default=256, help="training context of the models")
    ap.add_argument("--md", default="docs/length_generalisation.md")
    ap.add_argument("--svg", default="docs/ppl_mean_by_position.svg")
    ap.add_argument("--json", default=None, help="write the aggregate here too")
    ap.add_argument("--cache", default=None, help="per-(model, book) results, reused on re-runs")
    ap.add_argument("--extra", default="", help="extra arguments for recurd score")
    ap.add_argument("--update-cards", action="store_true")
    ap.add_argument("--tol", type=float, default=1.05)
    a = ap.parse_args(argv)
    models = [m for m in a.models.split(",") if m]
    if bool(a.books) == bool(a.ids):
        sys.exit("give exactly one of --books and --ids")
    if a.books:
        books = sorted(glob.glob(os.path.join(a.books, "*.txt.xz")))
    else:
        books = sorted(glob.glob(os.path.join(a.ids, "*.u16")) + glob.glob(os.path.join(a.ids, "*.ids")))
    if not books:
        sys.exit(f"no books in {a.books or a.ids}")
    for m in models:
        if not os.path.exists(os.path.join(m, "config.json")):
            sys.exit(f"not a model dir: {m}")
    cache = {}
    if a.cache and os.path.exists(a.cache):
        with open(a.cache) as f:
            cache = json.load(f)
    extra = shlex.split(a.extra)
    with tempfile.TemporaryDirectory(prefix="recur_books_") as tmp:
        texts = {}
        mode = "text" if a.books else "tokens"
        for b in books:
            if a.books:
                name = os.path.basename(b)[:-len(".xz")]
                p = os.path.join(tmp, name)
                with lzma.open(b, "rb") as f, open(p, "wb") as g:
                    g.write(f.read())
            else:
                name = os.path.basename(b) + (f"@{a.max_tokens}" if a.max_tokens else "")
                p = os.path.join(tmp, os.path.basename(b) + ".txt")
                write_ids(b, p, a.max_tokens)
            texts[name] = p
        for m in models:
            for name, p in texts.items():
                key = f"{m}|{name}"
                if key in cache:
                    continue
                res = score_book(a.recurd, m, p, extra, mode)
                cache[key] = res
                print(f"{m} {name}: {res['n_tokens']} tokens, ppl {res['ppl']:.3f} "
                      f"({res['seconds']:.0f}s)", flush=True)
                if a.cache:
                    with open(a.cache + ".tmp", "w") as f:
                        json.dump(cache, f)
                    os.replace(a.cache + ".tmp", a.cache)
    agg, targets, per_model = {}, {}, {}
    for m in models:
        label = os.path.basename(os.path.normpath(m))
        per = {k.split("|", 1)[1]: v for k, v in cache.items() if k.split("|", 1)[0] == m}
        per_model[label] = per
        agg[label] = aggregate(per)
        targets[label] = check_targets(agg[label], a.ctx, a.tol)
    tbl = table_md(agg, a.ctx)
    xs = shlex.split(a.extra)
    span = (f"its first {xs[xs.index('--max-tokens') + 1]} tokens"
            if "--max-tokens" in xs[:-1] else "to its end")
    cmdline = "/usr/bin/python3 train/eval_books.py " + " ".join(
        shlex.quote(x) for x in (argv if argv is not None else sys.argv[1:]))
    lines = ["# Length generalisation: perplexity by position", "",
             f"`recurd score --{'text' if a.books else 'tokens'}` on the {len(books)} evaluation books (`dev_eval`, never "
             f"trained on), each read as one stream from the zero state ({span}); a prediction made after "
             "position p falls in [0,1) if p = 0, else [2^k, 2^(k+1)). \"mean\" = mean over books "
             "of each book's perplexity in the bucket; \"pooled\" = over all predictions. "
             f"Training context: {a.ctx} tokens. Generated by `train/eval_books.py`:", "",
             "```sh", cmdline, "```", "",
             tbl, "", "## Targets", ""]
    for label, t in targets.items():
        if t.get("ref_ppl") is None:
            lines.append(f"- {label}: {t.get('reason')}")
            continue
        lr = "n/a" if t["last_ratio"] is None else f"{t['last_ratio']:.3f}x"
        wr = "n/a" if t["worst_ratio"] is None else f"{t['worst_ratio']:.3f}x"
        lines.append(f"- {label}: [{t['last_bucket'][0]}, {t['last_bucket'][1]}) is {lr} the "
                     f"perplexity of [{t['ref_bucket'][0]}, {t['ref_bucket'][1]}) "
                     f"({t['ref_ppl']:.2f}); worst bucket past the context {wr}"
                     f" -> {'within' if t['ok'] else 'NOT within'} {a.tol}x")
    svg_rel = os.path.relpath(a.svg, os.path.dirname(a.md) or ".")
    lines += ["", f"![perplexity by position]({svg_rel})", "", "## By book", "",
              "Perplexity of each book in the bucket just below the training context, in the "
              "last bucket, and their ratio (the targets above compare means over books):", "",
              by_book_md(per_model, a.ctx, a.tol), ""]
    os.makedirs(os.path.dirname(a.md) or ".", exist_ok=True)
    # text written by hand after the marker survives a re-run
    kept = ""
    if os.path.exists(a.md):
        with open(a.md) as f:
            old = f.read()
        if HAND in old:
            kept = old[old.index(HAND):]
    with open(a.md, "w") as f:
        f.write("\n".join(lines) + ("\n" + kept if kept else ""))
    os.makedirs(os.path.dirname(a.svg) or ".", exist_ok=True)
    plot(agg, a.ctx, a.svg, f"Perplexity by position, {len(books)} books")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"aggregate": agg, "targets": targets}, f, indent=1)
    if a.update_cards:
        section = (f"Through the C engine (`recurd score --{'text' if a.books else 'tokens'}`, "
                   f"{len(books)} evaluation books, `train/eval_books.py`):\n\n" + tbl + "\n\n"
                   + "\n".join(ln for ln in lines if ln.startswith("- ")))
        for m in models:
            p = os.path.join(m, "README.md")
            if os.path.exists(p):
                with open(p) as f:
                    card = f.read()
                with open(p, "w") as f:
                    f.write(export.replace_eval_section(card, section))
    print(tbl)
    for ln in lines:
        if ln.startswith("- "):
            print(ln)
    return 0


if __name__ == "__main__":
    sys.exit(main())
