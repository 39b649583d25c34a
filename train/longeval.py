"""Long-stream evaluation in PyTorch (device-side preview of what `recurd score` and
`recurd effrem` compute in C, and a cross-check for them).

Position buckets follow core/score.h: the prediction made after reading the token at
position p (it predicts token p+1) falls in bucket [0,1) if p == 0, else [2^k, 2^(k+1)).
Per-book bucket perplexities are averaged over books ("mean") and also pooled over
all predictions ("pooled").
"""
import math

import numpy as np
import torch

from model import detach_states, ssm_stds


def bucket_of(p):
    return 0 if p == 0 else int(p).bit_length()


def bucket_range(k):
    return (0, 1) if k == 0 else (1 << (k - 1), 1 << k)


def _no_tf32():
    class Ctx:
        def __enter__(self):
            self.old = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
            torch.backends.cuda.matmul.allow_tf32 = False
            torch.backends.cudnn.allow_tf32 = False

        def __exit__(self, *exc):
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = self.old
    return Ctx()


@torch.no_grad()
def token_logprobs(model, ids, seg=8192, device=None, cuts=None, on_cut=None):
    """log p(ids[p+1] | ids[:p+1]) for p = 0..n-2, streaming segments with carried state,
    float32 weights and math (no autocast, no TF32). Segments end every seg tokens, or at
    the sorted positions cuts (the last must be n-1); on_cut(position, states) is called
    after each segment."""
    device = device or next(model.parameters()).device
    ids_t = torch.as_tensor(np.asarray(ids, dtype=np.int64))
    n = len(ids_t)
    out = torch.empty(max(0, n - 1), dtype=torch.float64)
    if cuts is None:
        cuts = [min(n - 1, s + seg) for s in range(0, n - 1, seg)]
    states, s = None, 0
    was = model.training
    model.eval()
    with _no_tf32():
        for e in cuts:
            if e <= s:
                continue
            x = ids_t[s:e].to(device)[None]
            logits, states = model(x, states)
            states = detach_states(states)
            lp = torch.log_softmax(logits[0].float(), dim=-1)
            tgt = ids_t[s + 1:e + 1].to(device)
            out[s:e] = lp.gather(1, tgt[:, None])[:, 0].double().cpu()
            if on_cut is not None:
                on_cut(e, states)
            s = e
    model.train(was)
    return out.numpy()


def bucket_stats(lps):
    """-> list of (start, end, n, nll_sum) for non-empty buckets of a token_logprobs array."""
    n = len(lps)
    res = []
    k = 0
    while True:
        a, b = bucket_range(k)
        if a >= n:
            break
        seg = lps[a:min(b, n)]
        res.append((a, b, len(seg), float(-seg.sum())))
        k += 1
    return res


def aggregate(per_book):
    """per_book: list of bucket_stats lists -> rows {start,end,books,n,ppl_mean,ppl_pooled}."""
    table = {}
    for bs in per_book:
        for a, b, n, nll in bs:
            r = table.setdefault((a, b), {"start": a, "end": b, "books": 0, "n": 0, "nll": 0.0,
                                          "ppls": []})
            r["books"] += 1
            r["n"] += n
            r["nll"] += nll
            r["ppls"].append(math.exp(nll / n))
    rows = []
    for key in sorted(table):
        r = table[key]
        rows.append({"start": r["start"], "end": r["end"], "books": r["books"], "n": r["n"],
                     "ppl_mean": float(np.mean(r["ppls"])),
                     "ppl_pooled": math.exp(r["nll"] / r["n"])})
    return rows


def position_ppl(model, books_ids, max_tokens=262144, seg=8192, stop_at=None):
    """books_ids: list of int arrays. Scores the first max_tokens tokens of each book;
    stops early (fewer books, see each row's "books") once time.time() passes stop_at."""
    import time
    per_book = []
    for ids in books_ids:
        if stop_at is not None and per_book and time.time() > stop_at:
            break
        per_book.append(bucket_stats(token_logprobs(model, ids[:max_tokens], seg=seg)))
    return aggregate(per_book)


@torch.no_grad()
def effrem(model, ids, Ts=(256, 1024, 4096), points=16):
    """Effective Remembrance: TV(q(.|x[0:T]), q(.|x[t:T])) for t = k*T/points, k < points.
    Returns {T: [(t, tv), ...]} for one token stream."""
    device = next(model.parameters()).device
    ids_t = torch.as_tensor(np.asarray(ids, dtype=np.int64)).to(device)
    out = {}
    model.eval()
    with _no_tf32():
        for T in Ts:
            if T > len(ids_t):
                continue
            lg, _ = model(ids_t[None, :T])
            p = torch.softmax(lg[0, -1].double(), -1)
            curve = []
            for k in range(points):
                t = k * T // points
                lg2, _ = model(ids_t[None, t:T])
                q = torch.softmax(lg2[0, -1].double(), -1)
                curve.append((t, float(0.5 * (p - q).abs().sum())))
            out[T] = curve
    return out


def format_table(results, ctx=None):
    """results: {model_name: rows}. Markdown, one column per model."""
    names = list(results)
    keys = sorted({(r["start"], r["end"]) for rows in results.values() for r in rows})
    lines = ["| positions | " + " | ".join(f"{n} ppl" for n in names) + " |",
             "|---|" + "---|" * len(names)]
    for a, b in keys:
        cells = []
        for n in names:
            r = next((r for r in results[n] if (r["start"], r["end"]) == (a, b)), None)
            cells.append(f"{r['ppl_mean']:.2f}" if r else "")
        mark = " (last inside training ctx)" if ctx and b == ctx else ""
        lines.append(f"| [{a}, {b}){mark} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ------------------------------------------------------------ failure ratio (issue 17)
def failure_targets(n, T, per_bucket, seed=0):
    """Sampled target positions t (the token x[t] is predicted) for each bucket
    [2^k, 2^(k+1)) that starts at or past T and holds tokens of a stream of n tokens:
    per_bucket positions evenly spaced with a seeded random offset. -> {(lo, hi): [t...]}"""
    rng = np.random.default_rng(seed)
    out = {}
    lo = 1 << max(0, (T - 1).bit_length())   # the first power of two >= T
    while lo < n:
        hi = 2 * lo
        span = min(hi, n) - lo
        k = min(per_bucket, span)
        step = span / k
        off = rng.random() * step
        out[(lo, hi)] = sorted({lo + int(off + i * step) for i in range(k)})
        lo = hi
    return out


@torch.no_grad()
def last_logprobs(model, windows, targets, batch=128):
    """log p(target | window) from the zero state, float32, for each row of windows (m, T)."""
    device = next(model.parameters()).device
    res = []
    for i in range(0, windows.shape[0], batch):
        lg, _ = model(windows[i:i + batch].to(device), last_only=True)
        lp = torch.log_softmax(lg[:, 0].float(), -1)
        res.append(lp.gather(1, targets[i:i + batch].to(device)[:, None])[:, 0].double().cpu())
    return torch.cat(res).numpy()


def stream_with_states(model, ids, seg=8192):
    """token_logprobs, plus the state's std at positions 2^k and every seg tokens:
    -> (lps, [(position, [std per layer])])."""
    n = len(ids)
    cuts = sorted({1 << k for k in range(40) if (1 << k) < n - 1} | set(range(seg, n - 1, seg))
                  | {n - 1})
    stds = []
    lps = token_logprobs(model, ids, cuts=cuts,
                         on_cut=lambda e, st: stds.append((e, ssm_stds(st))))
    return lps, stds


def failure_book(model, ids, T, per_bucket=128, seed=0, seg=8192):
    """One book: stream log-probs (all positions) and, for sampled targets in each bucket
    past T, the stream's log-prob vs the log-prob from the zero state after exactly the T
    tokens before the target. -> dict with per-bucket sums and the state-std trace."""
    ids = np.asarray(ids, dtype=np.int64)
    lps, stds = stream_with_states(model, ids, seg)
    tg = failure_targets(len(ids), T, per_bucket, seed)
    flat = [t for ts in tg.values() for t in ts]
    rows = []
    if flat:
        win = torch.as_tensor(np.stack([ids[t - T:t] for t in flat]))
        tgt = torch.as_tensor(ids[flat])
        with _no_tf32():
            r = last_logprobs(model, win, tgt)
        i = 0
        for (lo, hi), ts in tg.items():
            s_nll = float(-sum(lps[t - 1] for t in ts))
            r_nll = float(-r[i:i + len(ts)].sum())
            i += len(ts)
            rows.append({"start": lo, "end": hi, "n": len(ts), "stream_nll": s_nll,
                         "restart_nll": r_nll})
    return {"n_tokens": int(len(ids)), "failure": rows, "buckets": bucket_stats(lps),
            "state_std": stds}


def pool_failure(books):
    """Token-weighted pooling over books: ratio = exp(mean stream nll - mean restart nll)."""
    acc = {}
    for bk in books:
        for r in bk["failure"]:
            a = acc.setdefault((r["start"], r["end"]), [0, 0.0, 0.0, 0])
            a[0] += r["n"]
            a[1] += r["stream_nll"]
            a[2] += r["restart_nll"]
            a[3] += 1
    rows = []
    for (lo, hi), (n, s, rr, nb) in sorted(acc.items()):
        rows.append({"start": lo, "end": hi, "n": n, "books": nb,
                     "stream_ppl": math.exp(s / n), "restart_ppl": math.exp(rr / n),
                     "ratio": math.exp((s - rr) / n)})
    return rows
