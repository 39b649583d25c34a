"""Tables of train/fidelity.py runs against issue 17's criteria (fixed in advance), and on
the device, the pack of the seed that best shows them (--pack OUT).

  base: failure ratio >= 1.5 in some bucket at >= 16k, and rising (the last bucket's ratio
        >= the ratio at 16k), in >= 2 of 3 seeds
  SP:   <= 1.05 in every bucket to 256k, and below the base's pooled perplexity at >= 16k
  SP's zero-state validation perplexity within 5 % of the base's
"""
import argparse
import glob
import json
import math
import os
import shutil
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def pooled_ppl(ev, lo_min):
    """pooled perplexity over all stream tokens at positions >= lo_min (per-book buckets)."""
    n = nll = 0
    for bk in ev["per_book"]:
        for a, b, k, s in bk["buckets"]:
            if a >= lo_min:
                n += k
                nll += s
    return math.exp(nll / n) if n else float("nan")


def judge(r):
    ev = r.get("eval", {})
    out = {"name": r["name"], "seed": r["args"]["seed"], "tokens": r.get("pretrain", {}).get("tokens"),
           "val_ppl": r.get("val_ppl", {})}
    for k in ev:
        rows = ev[k]["failure"]
        out[k] = {f"{x['start']}": round(x["ratio"], 3) for x in rows}
        out[k + "_ppl16k"] = pooled_ppl(ev[k], 16384)
    if "base" in ev:
        late = [x for x in ev["base"]["failure"] if x["start"] >= 16384]
        out["base_fails"] = bool(late) and max(x["ratio"] for x in late) >= 1.5 \
            and late[-1]["ratio"] >= late[0]["ratio"]
        out["base_max_late"] = max((x["ratio"] for x in late), default=float("nan"))
    if "sp" in ev:
        out["sp_ok"] = all(x["ratio"] <= 1.05 for x in ev["sp"]["failure"]) \
            and out["sp_ppl16k"] < out.get("base_ppl16k", float("inf"))
        v = r.get("val_ppl", {})
        out["sp_val_within_5pct"] = v.get("sp", 1e9) <= 1.05 * v.get("base", 0)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", required=True)
    ap.add_argument("--pack", default="")
    a = ap.parse_args(argv)
    res = []
    for fn in sorted(glob.glob(os.path.join(a.runs, "*", "result.json"))):
        with open(fn) as f:
            res.append(json.load(f))
    js = [judge(r) for r in res]
    for j in js:
        print(json.dumps(j))
    if a.pack and js:
        import pack
        ok = [j for j in js if j.get("base_fails") and j.get("sp_ok")]
        pool = ok or [j for j in js if "base_max_late" in j]
        best = max(pool, key=lambda j: j["base_max_late"]) if pool else js[0]
        print(f"packing {best['name']} (criteria met: {bool(ok)})")
        stage = os.path.join(a.runs, "_pack")
        os.makedirs(stage, exist_ok=True)
        for k in ("base", "sp"):
            src = os.path.join(a.runs, best["name"], k)
            if os.path.isdir(src):
                shutil.copytree(src, os.path.join(stage, k))
        shutil.copy(os.path.join(a.runs, best["name"], "result.json"), stage)
        pack.pack(stage, a.pack, "fid")


if __name__ == "__main__":
    main()
