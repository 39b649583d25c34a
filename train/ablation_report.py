"""Tables of docs/length_ablations.md from the committed result files (no torch, no models):

  train/results/longeval.json                     shipped pair (+ its post-training variants)
  train/results/ablations/ctx64/longeval_*.json   ctx-64 bases, default and long-memory dt init
  train/results/ablations/ctx64-longmem/          call 2 on the long-memory ctx-64 base
  train/results/ablations/ctx256-longmem/         one-call run: long-memory ctx-256 base + SP
  train/results/ablations/restart-*.json          train/eval_restart.py (C engine)

    /usr/bin/python3 train/ablation_report.py --svg docs/length_ablations.svg > /tmp/tables.md
"""
import json
import math
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
R = os.path.join(HERE, "results")
A = os.path.join(R, "ablations")

# column label -> (longeval file, key in it, training context)
RUNS = [
    ("shipped base (ctx 256)", os.path.join(R, "longeval.json"), "base", 256),
    ("shipped SP", os.path.join(R, "longeval.json"), "sp", 256),
    ("ctx256-longmem base", os.path.join(A, "ctx256-longmem", "longeval.json"), "base", 256),
    ("ctx256-longmem SP", os.path.join(A, "ctx256-longmem", "longeval.json"), "sp", 256),
    ("ctx64 base", os.path.join(A, "ctx64", "longeval_base_default_init.json"), None, 64),
    ("ctx64-longmem base", os.path.join(A, "ctx64-longmem", "longeval.json"), "base", 64),
    ("ctx64-longmem SP", os.path.join(A, "ctx64-longmem", "longeval.json"), "sp", 64),
    ("ctx64-longmem zero", os.path.join(A, "ctx64-longmem", "longeval.json"), "zero", 64),
    ("ctx64-longmem TBTT", os.path.join(A, "ctx64-longmem", "longeval.json"), "tbtt", 64),
    ("ctx64-longmem fitted", os.path.join(A, "ctx64-longmem", "longeval.json"), "fitted", 64),
]

# restart files -> labels used in them -> column label
RESTART = [
    ("restart-shipped.json", {"recur-base": "shipped base", "recur-sp": "shipped SP"}),
    ("restart-ctx256-longmem.json", {"b256-base": "ctx256-longmem base", "b256-sp": "ctx256-longmem SP"}),
    ("restart-ctx64.json", {"a64-base": "ctx64 base", "b64-base": "ctx64-longmem base",
                            "b64-sp": "ctx64-longmem SP"}),
]


def load(path, key):
    d = json.load(open(path))
    return d[key] if key else d


def position_table():
    cols = [(label, {(r["start"], r["end"]): r["ppl_mean"] for r in load(p, k)}, ctx)
            for label, p, k, ctx in RUNS]
    buckets = sorted(set().union(*[c[1] for c in cols]))
    out = ["| positions | " + " | ".join(c[0] for c in cols) + " |",
           "|---|" + "---|" * len(cols)]
    for b in buckets:
        if b[0] < 32:
            continue
        cells = []
        for _, rows, ctx in cols:
            v = rows.get(b)
            mark = "*" if b[1] == ctx else ""
            cells.append("" if v is None else f"{v:.2f}{mark}")
        out.append(f"| [{b[0]}, {b[1]}) | " + " | ".join(cells) + " |")
    out += ["", "(* the last bucket inside that model's training context)", "",
            "| model | last bucket / bucket just below the context | last bucket / [128, 256) |",
            "|---|---|---|"]
    for label, rows, ctx in cols:
        last = rows[max(rows)]
        below = rows[(ctx // 2, ctx)]
        out.append(f"| {label} | {last / below:.3f} | {last / rows[(128, 256)]:.3f} |")
    return "\n".join(out)


def restart_data():
    data = {}
    for fn, labels in RESTART:
        d = json.load(open(os.path.join(A, fn)))
        for lab, col in labels.items():
            per = d["per_book"][lab]
            data[col] = {}
            for bucket, xs in per.items():
                n = sum(x["n"] for x in xs)
                s = math.exp(sum(x["stream_nll"] for x in xs) / n)
                r = math.exp(sum(x["restart_nll"] for x in xs) / n)
                lo = int(bucket[1:].split(",")[0])
                data[col][lo] = (s, r)
    return data


def restart_svg(path):
    import svgplot
    data = restart_data()
    series, runs = [], []
    for col, rows in data.items():
        run = col.rsplit(" ", 1)[0]          # "ctx64-longmem SP" -> "ctx64-longmem"
        if run not in runs:
            runs.append(run)                 # one colour per run, dashed for its SP model
        series.append({"label": col, "points": [(lo * 1.5, s / r) for lo, (s, r) in sorted(rows.items())],
                       "color": svgplot.COLORS[runs.index(run) % len(svgplot.COLORS)],
                       "dash": "" if "SP" not in col else "6,3"})
    svgplot.line_plot(path, series, "Stream / restart perplexity on the same tokens (C engine, 4 books)",
                      "position (bucket middle)", "ppl(stream) / ppl(restart)", log2x=True,
                      vlines=[(64, "ctx 64"), (256, "ctx 256")])


def restart_table():
    data = restart_data()
    cols = list(data)
    los = sorted(set().union(*[data[c] for c in cols]))
    out = ["| positions | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    for lo in los:
        cells = []
        for c in cols:
            v = data[c].get(lo)
            cells.append("" if v is None else f"{v[0] / v[1]:.3f}")
        out.append(f"| [{lo}, {2 * lo}) | " + " | ".join(cells) + " |")
    out += ["", "Stream perplexity at [65536, 131072) (pooled over the 4 books, C engine):", "",
            "| model | stream | restart |", "|---|---|---|"]
    for c in cols:
        s, r = data[c][65536]
        out.append(f"| {c} | {s:.2f} | {r:.2f} |")
    return "\n".join(out)


def effrem_table():
    files = [("shipped", os.path.join(R, "effrem.json")),
             ("ctx256-longmem", os.path.join(A, "ctx256-longmem", "effrem.json")),
             ("ctx64-longmem", os.path.join(A, "ctx64-longmem", "effrem.json"))]
    out = ["| model | T | TV at t = T/4 | TV at t = T/2 | TV at t = 3T/4 |", "|---|---|---|---|---|"]
    for run, p in files:
        d = json.load(open(p))
        for m in ("base", "sp"):
            for T in ("1024", "4096"):
                pts = dict((int(t), v) for t, v in d[m][T])
                Ti = int(T)
                out.append(f"| {run} {m} | {T} | {pts[Ti // 4]:.3f} | {pts[Ti // 2]:.3f} | "
                           f"{pts[3 * Ti // 4]:.3f} |")
    return "\n".join(out)


def val_table():
    rows = []
    sh = json.load(open(os.path.join(R, "summary.json")))
    rows.append(("shipped (ctx 256, dt in [0.001, 0.1], 117M tokens)", None, sh["variants"]))
    for run, desc in (("ctx256-longmem", "ctx 256, dt in [1e-4, 1e-2], 84.5M tokens"),
                      ("ctx64-longmem", "ctx 64, dt in [1e-4, 1e-2], 48.0M tokens")):
        s = json.load(open(os.path.join(A, run, "summary.json")))
        rows.append((f"{run} ({desc})", s.get("base_val_loss"), s["variants"]))
    out = ["| run | base | SP | zero | TBTT | fitted |", "|---|---|---|---|---|---|"]
    for name, base, var in rows:
        cells = [f"{math.exp(base):.2f}" if base else "38.70 (report.md)"]
        for v in ("sp", "zero", "tbtt", "fitted"):
            cells.append(f"{math.exp(var[v]['val_loss']):.2f}" if v in var else "")
        out.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def main():
    if len(sys.argv) > 2 and sys.argv[1] == "--svg":
        restart_svg(sys.argv[2])
    print("## Validation perplexity (held-out books, windows of the training context)\n")
    print(val_table())
    print("\n## Perplexity by position (PyTorch on the device, mean over the 12 books)\n")
    print(position_table())
    print("\n## Stream / restart (C engine, first 131072 tokens of 4 books)\n")
    print(restart_table())
    print("\n## Effective Remembrance (PyTorch, mean over 4 books)\n")
    print(effrem_table())
    return 0


if __name__ == "__main__":
    sys.exit(main())
