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

from model import detach_states


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
def token_logprobs(model, ids, seg=8192, device=None):
    """log p(ids[p+1] | ids[:p+1]) for p = 0..n-2, streaming segments with carried state,
    float32 weights and math (no autocast, no TF32)."""
    device = device or next(model.parameters()).device
    ids_t = torch.as_tensor(np.asarray(ids, dtype=np.int64))
    n = len(ids_t)
    out = torch.empty(max(0, n - 1), dtype=torch.float64)
    states = None
    was = model.training
    model.eval()
    with _no_tf32():
        for s in range(0, n - 1, seg):
            e = min(n - 1, s + seg)
            x = ids_t[s:e].to(device)[None]
            logits, states = model(x, states)
            states = detach_states(states)
            lp = torch.log_softmax(logits[0].float(), dim=-1)
            tgt = ids_t[s + 1:e + 1].to(device)
            out[s:e] = lp.gather(1, tgt[:, None])[:, 0].double().cpu()
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
