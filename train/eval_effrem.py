"""Effective Remembrance through the C engine (paper: TV distance between the next-token
distributions at T with and without the prefix before t).

Runs `recurd effrem --model DIR --text FILE --T 256,1024,4096 --points 16 --json` for every
(model, book), averages TV over books per (T, t), writes a markdown table and an SVG.

  /usr/bin/python3 train/eval_effrem.py --recurd build/server/recurd \
      --models models/recur-base,models/recur-sp --books ../shared/data/gutenberg/dev_eval \
      --md docs/effective_remembrance.md --svg docs/effective_remembrance.svg

recurd's JSON: {"curves": [{"T": 256, "points": [{"t": 0, "tv": 0.0}, ...]}, ...]}
"""
import argparse
import glob
import json
import lzma
import os
import shlex
import subprocess
import sys
import tempfile

import svgplot


def run_effrem(recurd, model, path, Ts, points, extra):
    cmd = [recurd, "effrem", "--model", model, "--text", path, "--T", ",".join(map(str, Ts)),
           "--points", str(points), "--json"] + extra
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(map(shlex.quote, cmd))} failed ({r.returncode}): "
                           f"{r.stderr.strip()[-2000:]}")
    return json.loads(r.stdout)


def aggregate(results):
    """results: list of effrem JSONs (one per book) -> {T: [(t, mean tv, books)]}."""
    acc = {}
    for j in results:
        for c in j["curves"]:
            for p in c["points"]:
                acc.setdefault(int(c["T"]), {}).setdefault(int(p["t"]), []).append(float(p["tv"]))
    return {T: [(t, sum(v) / len(v), len(v)) for t, v in sorted(ts.items())]
            for T, ts in sorted(acc.items())}


def table_md(agg):
    names = list(agg)
    Ts = sorted({T for a in agg.values() for T in a})
    out = []
    for T in Ts:
        ts = sorted({t for n in names for t, _, _ in agg[n].get(T, [])})
        out += [f"T = {T}:", "", "| t | t/T | " + " | ".join(f"{n} TV" for n in names) + " |",
                "|---|---|" + "---|" * len(names)]
        for t in ts:
            cells = []
            for n in names:
                v = next((tv for tt, tv, _ in agg[n].get(T, []) if tt == t), None)
                cells.append("" if v is None else f"{v:.4f}")
            out.append(f"| {t} | {t / T:.3f} | " + " | ".join(cells) + " |")
        out.append("")
    return "\n".join(out)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recurd", required=True)
    ap.add_argument("--models", required=True)
    ap.add_argument("--books", required=True)
    ap.add_argument("--n-books", type=int, default=12)
    ap.add_argument("--T", default="256,1024,4096")
    ap.add_argument("--points", type=int, default=16)
    ap.add_argument("--md", default="docs/effective_remembrance.md")
    ap.add_argument("--svg", default="docs/effective_remembrance.svg")
    ap.add_argument("--cache", default=None)
    ap.add_argument("--extra", default="")
    a = ap.parse_args(argv)
    Ts = [int(x) for x in a.T.split(",") if x]
    models = [m for m in a.models.split(",") if m]
    books = sorted(glob.glob(os.path.join(a.books, "*.txt.xz")))[:a.n_books]
    if not books:
        sys.exit(f"no *.txt.xz in {a.books}")
    cache = {}
    if a.cache and os.path.exists(a.cache):
        with open(a.cache) as f:
            cache = json.load(f)
    with tempfile.TemporaryDirectory(prefix="recur_effrem_") as tmp:
        for b in books:
            name = os.path.basename(b)[:-len(".xz")]
            p = os.path.join(tmp, name)
            with lzma.open(b, "rb") as f, open(p, "wb") as g:
                g.write(f.read())
            for m in models:
                key = f"{m}|{name}|{a.T}|{a.points}"
                if key not in cache:
                    cache[key] = run_effrem(a.recurd, m, p, Ts, a.points, shlex.split(a.extra))
                    print(f"{m} {name}: done", flush=True)
                    if a.cache:
                        with open(a.cache + ".tmp", "w") as f:
                            json.dump(cache, f)
                        os.replace(a.cache + ".tmp", a.cache)
    agg = {}
    for m in models:
        label = os.path.basename(os.path.normpath(m))
        agg[label] = aggregate([v for k, v in cache.items()
                                if k.split("|")[0] == m and k.endswith(f"|{a.T}|{a.points}")])
    tbl = table_md(agg)
    md = ["# Effective Remembrance", "",
          "EffRem_T(t) = TV(q(.|x[0:T]), q(.|x[t:T])): how much the prediction at T still "
          "depends on the tokens before t (Buitrago Ruiz & Gu). Mean over "
          f"{len(books)} evaluation books, `recurd effrem`, `train/eval_effrem.py`.", "", tbl,
          f"![effective remembrance]({os.path.relpath(a.svg, os.path.dirname(a.md) or '.')})", ""]
    os.makedirs(os.path.dirname(a.md) or ".", exist_ok=True)
    with open(a.md, "w") as f:
        f.write("\n".join(md))
    series = []
    for i, (label, per_T) in enumerate(agg.items()):
        for j, (T, pts) in enumerate(per_T.items()):
            series.append({"label": f"{label} T={T}", "points": [(t / T, tv) for t, tv, _ in pts],
                           "color": svgplot.COLORS[i % len(svgplot.COLORS)],
                           "dash": svgplot.DASHES[j % len(svgplot.DASHES)]})
    os.makedirs(os.path.dirname(a.svg) or ".", exist_ok=True)
    svgplot.line_plot(a.svg, series, "Effective Remembrance", "t / T", "TV distance")
    print(tbl)
    return 0


if __name__ == "__main__":
    sys.exit(main())
