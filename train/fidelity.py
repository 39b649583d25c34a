"""Issue 17, one seed of one configuration on the device: pre-train a Mamba-2 base at a
short context, post-train it with State Passing (and optionally the paper's IID-noise
initial states), and measure what Figure 1 is about in PyTorch (fp32, no TF32):

  failure ratio  for sampled targets x[t] in each bucket [2^k, 2^(k+1)) at or past T:
                 ppl(x[t] | the whole book before it, streamed from the zero state) /
                 ppl(x[t] | zero state + exactly the T tokens before it), pooled over books
  pooled perplexity by bucket, per-book tables, the state's std by position, and the
  zero-state validation perplexity (windows of the training context).

Everything is on one clock (RECUR_T0): pre-training stops early enough for the 500
post-training steps (timed on a throwaway probe) and the evaluation to end by --deadline.
Writes DIR/result.json and DIR/{base,sp[,noise]}/ (state-spaces layout, bf16).

  python3 train/fidelity.py --name s1 --seed 1 --dt-min 1e-5 --dt-max 1e-3 --out /tmp/fid/s1
"""
import argparse
import copy
import json
import math
import os
import sys
import time
import traceback

import torch

import checkpoint
import common
import corpus
import longeval
from common import Log, since_start
from model import Mamba2LM, ModelConfig
from pretrain_base import load_eval_books, model_args
from trainer import TrainArgs, pick_device, train


def parse(argv):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--name", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--data", default=".data/train.txt.xz")
    ap.add_argument("--tokenizer", default=".data/tokenizer.json")
    ap.add_argument("--eval-books", default=".data/dev_eval")
    ap.add_argument("--n-eval-books", type=int, default=12)
    ap.add_argument("--eval-tokens", type=int, default=262144)
    ap.add_argument("--targets", type=int, default=128, help="sampled targets per bucket per book")
    ap.add_argument("--seed", type=int, default=1)
    model_args(ap)                                # the shipped shape by default
    ap.add_argument("--ctx", type=int, default=256)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--dt-min", type=float, default=1e-5)
    ap.add_argument("--dt-max", type=float, default=1e-3)
    ap.add_argument("--dt-floor", type=float, default=1e-4, help="mamba_ssm's dt_init_floor")
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--max-tokens", type=float, default=0, help="cap on pre-training tokens")
    ap.add_argument("--post-steps", type=int, default=500)
    ap.add_argument("--post-lr", type=float, default=5e-4)
    ap.add_argument("--variants", default="sp", help="sp[,noise]")
    ap.add_argument("--deadline", type=float, default=540)
    ap.add_argument("--eval-reserve", type=float, default=60)
    ap.add_argument("--n-val", type=int, default=6)
    ap.add_argument("--val-windows", type=int, default=256)
    ap.add_argument("--max-books", type=int, default=0)
    ap.add_argument("--mock-hf", action="store_true")
    ap.add_argument("--device", default="auto")
    return ap.parse_args(argv)


def main(argv=None):
    a = parse(argv)
    os.makedirs(a.out, exist_ok=True)
    log = Log(os.path.join(a.out, "run.log"))
    dev = pick_device(a.device)
    res = {"name": a.name, "args": vars(a), "versions": common.versions(), "status": "started"}
    rpath = os.path.join(a.out, "result.json")

    def flush():
        common.write_json(rpath, res)

    data = corpus.prepare(a.data, a.n_val, a.tokenizer, a.mock_hf, learn=False,
                          max_books=a.max_books or None, log=log)
    cfg = ModelConfig(d_model=a.d_model, n_layer=a.n_layer, d_state=a.d_state,
                      headdim=a.headdim, vocab_size=data["tok"].vocab_size,
                      chunk_size=a.chunk)
    common.seed_all(a.seed)
    model = Mamba2LM(cfg).init_weights(a.seed, dt_min=a.dt_min, dt_max=a.dt_max,
                                       dt_floor=a.dt_floor).to(dev)
    res["n_params"] = model.n_params()
    val_w = corpus.fixed_windows(data["val"], a.ctx, a.val_windows, 1235)
    books = load_eval_books(a.eval_books, data["tok"], a.n_eval_books, log) \
        if os.path.isdir(a.eval_books) else []

    # a throwaway probe times a training step under this call's load
    probe = copy.deepcopy(model)
    ph = train(probe, corpus.WindowSampler(data["train"], a.ctx, a.batch, 99, dev), None,
               TrainArgs(max_steps=30, log_every=10 ** 9, eval_every=0, ckpt_every_s=1e9), dev,
               log=lambda *x: None, tag="probe")
    # steps 10..30 only: the first steps pay CUDA's warm-up (timing all 30 overestimated a
    # step by ~1.7x on the device and cut pre-training short)
    el = {r["step"]: r["elapsed"] for r in ph["log"]}
    step_s = (el[30] - el[10]) / 20
    del probe
    n_var = len([v for v in a.variants.split(",") if v])
    post_s = n_var * a.post_steps * step_s * 1.15
    budget = a.deadline - since_start() - a.eval_reserve - post_s
    log(f"{a.name}: step {step_s:.3f}s, post-training estimate {post_s:.0f}s, "
        f"pre-training budget {budget:.0f}s")
    max_steps = int(a.max_tokens // (a.batch * a.ctx)) if a.max_tokens else 0
    ta = TrainArgs(lr=a.lr, budget_s=max(10.0, budget), max_steps=max_steps, log_every=200,
                   eval_every=0, ckpt_every_s=1e9, seed=a.seed)
    sampler = corpus.WindowSampler(data["train"], a.ctx, a.batch, a.seed, dev)
    h = train(model, sampler, val_w, ta, dev, log=log, tag=f"{a.name}-pre")
    res["pretrain"] = {k: h.get(k) for k in ("steps", "tokens", "seconds", "stop_reason",
                                               "final_val_loss", "mean_tok_per_s")}
    models = {"base": model}
    checkpoint.save_state_spaces(model, os.path.join(a.out, "base"), torch.bfloat16,
                                 training_context=a.ctx)
    res["status"] = "pre-trained"
    flush()

    res["post"] = {}
    for i, v in enumerate(x for x in a.variants.split(",") if x):
        m = copy.deepcopy(model).train()
        left = a.deadline - since_start() - a.eval_reserve * 0.6
        pa = TrainArgs(lr=a.post_lr, warmup=50, min_lr_ratio=0.1, budget_s=max(5.0, left),
                       max_steps=a.post_steps, log_every=100, eval_every=0, ckpt_every_s=1e9,
                       init_state=v, seed=a.seed + 100 + i)
        ph = train(m, corpus.WindowSampler(data["train"], a.ctx, a.batch, a.seed + 7 + i, dev),
                   val_w, pa, dev, log=log, tag=f"{a.name}-{v}")
        res["post"][v] = {k: ph.get(k) for k in ("steps", "tokens", "seconds", "stop_reason",
                                                   "final_val_loss", "noise_std")}
        models[v] = m
        checkpoint.save_state_spaces(m, os.path.join(a.out, v), torch.bfloat16,
                                     training_context=a.ctx)
        flush()

    # train() ends with the zero-state validation loss of the weights it returns
    res["val_ppl"] = {"base": math.exp(h["final_val_loss"])}
    res["val_ppl"].update({v: math.exp(r["final_val_loss"]) for v, r in res["post"].items()})
    res["eval"] = {}
    for k, m in models.items():
        per = []
        for bi, ids in enumerate(books):
            if per and since_start() > a.deadline - 5:
                log(f"{k}: stopping the evaluation after {len(per)} books (clock)")
                break
            bk = longeval.failure_book(m, ids[:a.eval_tokens], a.ctx, a.targets,
                                       seed=1000 + bi)
            per.append(bk)
        res["eval"][k] = {"failure": longeval.pool_failure(per),
                          "per_book": per}
        rows = res["eval"][k]["failure"]
        log(f"{a.name} {k}: val ppl {res['val_ppl'][k]:.2f}; failure ratio "
            + " ".join(f"[{r['start']}:{r['ratio']:.3f}]" for r in rows))
        flush()
    res["status"] = "done"
    res["elapsed_s"] = since_start()
    flush()
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Exception:
        traceback.print_exc()
        sys.exit(1)
