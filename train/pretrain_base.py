"""Device call 1: learn the tokenizer, encode the corpus, pre-train the base model under
a wall-clock budget. Everything the next call needs is packed into $OUT:

  call1.tar.partNN + call1.manifest.json   tokenizer.json, base/{config.json,
                                           model.safetensors (bf16)}, meta.json,
                                           train_log.jsonl, call1.log, longeval_base.json
  call1.log, summary.txt                   readable without unpacking

Periodic checkpoints re-pack the same files, so a run cut short still returns a model.
Unpack locally: python3 train/pack.py unpack --from FILES_AT --name call1 --to .data/call1
"""
import argparse
import glob
import json
import lzma
import math
import os
import shutil
import sys
import tempfile
import time
import traceback

import torch

import checkpoint
import common
import corpus
import longeval
import pack
from common import Log, since_start
from model import Mamba2LM, ModelConfig
from trainer import TrainArgs, pick_device, train


def model_args(ap):
    ap.add_argument("--d-model", type=int, default=384)
    ap.add_argument("--n-layer", type=int, default=8)
    ap.add_argument("--d-state", type=int, default=128)
    ap.add_argument("--headdim", type=int, default=64)
    ap.add_argument("--chunk", type=int, default=64)


def parse(argv):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=".data/train.txt.xz")
    ap.add_argument("--eval-books", default=".data/dev_eval", help="optional dir of *.txt.xz")
    ap.add_argument("--out", default=os.environ.get("OUT", "out/call1"))
    ap.add_argument("--vocab", type=int, default=8192)
    ap.add_argument("--tokenizer", default="", help="use this tokenizer.json instead of learning "
                    "one (e.g. models/recur-sp/tokenizer.json, to keep the shipped vocabulary)")
    ap.add_argument("--dt-min", type=float, default=1e-3, help="dt init: log-uniform in "
                    "[dt-min, dt-max] (mamba_ssm defaults 0.001, 0.1)")
    ap.add_argument("--dt-max", type=float, default=0.1)
    ap.add_argument("--tok-bytes", type=float, default=48e6, help="text to learn BPE on")
    ap.add_argument("--n-val", type=int, default=6)
    ap.add_argument("--val-windows", type=int, default=256)
    model_args(ap)
    ap.add_argument("--ctx", type=int, default=256)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--min-lr-ratio", type=float, default=0.1)
    ap.add_argument("--wd", type=float, default=0.1)
    ap.add_argument("--deadline", type=float, default=540, help="seconds after RECUR_T0 by which "
                    "everything must be in $OUT")
    ap.add_argument("--reserve", type=float, default=75, help="seconds kept for the final eval, "
                    "export, long eval and packing")
    ap.add_argument("--max-steps", type=int, default=0)
    ap.add_argument("--log-every", type=int, default=100)
    ap.add_argument("--eval-every", type=int, default=1000)
    ap.add_argument("--ckpt-every", type=float, default=120)
    ap.add_argument("--long-eval-tokens", type=int, default=262144)
    ap.add_argument("--long-eval-books", type=int, default=12)
    ap.add_argument("--long-eval-min-left", type=float, default=40,
                    help="skip the base model's long evaluation with less time left")
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--max-books", type=int, default=0, help="dry runs: use the first N books")
    ap.add_argument("--mock-hf", action="store_true", help="CPU dry run without HF tokenizers")
    return ap.parse_args(argv)


def load_eval_books(d, tok, n, log):
    files = sorted(glob.glob(os.path.join(d, "*.txt.xz")))[:n]
    if not files:
        log(f"no evaluation books in {d}: skipping the long-context evaluation")
        return []
    texts = []
    for fn in files:
        with lzma.open(fn, "rt", encoding="utf-8", newline="") as f:
            texts.append(f.read())
    ids = [corpus.encode_books(tok, [t])[:-1] for t in texts]  # no trailing <|endoftext|>
    log(f"evaluation books: {len(ids)} from {d}, tokens min {min(map(len, ids))} "
        f"max {max(map(len, ids))}")
    return ids


def main(argv=None):
    a = parse(argv)
    stage = tempfile.mkdtemp(prefix="recur_call1_")
    log = Log(os.path.join(stage, "call1.log"))
    out = a.out
    os.makedirs(out, exist_ok=True)
    common.need(a.data, "corpus (copy /work/shared/data/gutenberg/train.txt.xz to .data/)")
    common.seed_all(a.seed)
    dev = pick_device(a.device)
    vers = common.versions()
    log(f"call1: device {dev} {vers.get('gpu', '')}; versions {vers}")
    summary = {"call": 1, "versions": vers, "status": "started"}

    if a.tokenizer:
        common.need(a.tokenizer, "tokenizer.json given by --tokenizer")
        shutil.copyfile(a.tokenizer, os.path.join(stage, "tokenizer.json"))
    data = corpus.prepare(a.data, a.n_val, os.path.join(stage, "tokenizer.json"), a.mock_hf,
                          learn=not a.tokenizer, vocab_size=a.vocab, tok_bytes=a.tok_bytes,
                          max_books=a.max_books or None, log=log)
    tok = data["tok"]
    cfg = ModelConfig(d_model=a.d_model, n_layer=a.n_layer, d_state=a.d_state, headdim=a.headdim,
                      vocab_size=tok.vocab_size, chunk_size=a.chunk)
    torch.manual_seed(a.seed)
    model = Mamba2LM(cfg).init_weights(a.seed, dt_min=a.dt_min, dt_max=a.dt_max).to(dev)
    n_params = model.n_params()
    log(f"model {cfg.to_state_spaces()} chunk {cfg.chunk_size}: {n_params:,} params "
        f"({n_params * 2 / 1e6:.1f} MB bf16)")

    sampler = corpus.WindowSampler(data["train"], a.ctx, a.batch, a.seed, dev)
    val_w = corpus.fixed_windows(data["val"], a.ctx, a.val_windows, a.seed + 1)
    meta = {"model": cfg.to_dict(), "state_spaces_config": cfg.to_state_spaces(),
            "n_params": n_params, "args": vars(a), "versions": vers,
            "data": {"n_books": data["n_books"], "n_val": a.n_val, "val_titles": data["val_titles"],
                     "train_tokens": int(len(data["train"])), "val_tokens": int(len(data["val"])),
                     "train_sha256": data["train_sha256"], "val_sha256": data["val_sha256"],
                     "text_mb": data["text_bytes"] / 1e6, "tokenizer": tok.kind},
            "tokenizer_sha256": checkpoint.sha256_file(os.path.join(stage, "tokenizer.json"))}
    jsonl = open(os.path.join(stage, "train_log.jsonl"), "w")

    def save(m, h):
        """h: the trainer's history so far (steps, tokens, seconds, log, ...)."""
        t = time.time()
        d = os.path.join(stage, "base")
        sha = checkpoint.save_state_spaces(m, d, torch.bfloat16, {"step": h["steps"]})
        meta["pretrain"] = h
        meta["base"] = {"sha256": sha, "step": h["steps"], "tokens": h["tokens"]}
        common.write_json(os.path.join(stage, "meta.json"), meta)
        jsonl.flush()
        man = pack.pack(stage, out, "call1")
        shutil.copyfile(os.path.join(stage, "call1.log"), os.path.join(out, "call1.log"))
        log(f"checkpoint at step {h['steps']} packed: {man['tar_bytes'] / 1e6:.1f} MB in "
            f"{len(man['parts'])} parts ({time.time() - t:.1f}s)")

    budget = a.deadline - since_start() - a.reserve
    log(f"pre-training budget {budget:.0f}s (deadline {a.deadline:.0f}s, now {since_start():.0f}s)")
    if budget < 5:
        sys.exit("FATAL: no time left for training")
    ta = TrainArgs(lr=a.lr, warmup=a.warmup, min_lr_ratio=a.min_lr_ratio, wd=a.wd,
                   budget_s=budget, max_steps=a.max_steps, log_every=a.log_every,
                   eval_every=a.eval_every, ckpt_every_s=a.ckpt_every, init_state="zero",
                   compile=a.compile, seed=a.seed)
    try:
        hist = train(model, sampler, val_w, ta, dev, log=log, ckpt_fn=save, jsonl=jsonl,
                     tag="pretrain")
        summary["status"] = "trained"
    except Exception:  # keep whatever the last checkpoint holds, and say so
        log("TRAINING FAILED:\n" + traceback.format_exc())
        summary["status"] = "training failed"
        hist = {"error": traceback.format_exc()}
    hist["gpu"] = vers.get("gpu", str(dev))
    hist["val_windows"] = a.val_windows
    meta["pretrain"] = hist
    if "steps" in hist:
        save(model, hist)

    # long-context preview on the evaluation books (zero-start base model)
    left = a.deadline - since_start()
    if os.path.isdir(a.eval_books) and left > a.long_eval_min_left and "steps" in hist:
        try:
            books = load_eval_books(a.eval_books, tok, a.long_eval_books, log)
            if books:
                t = time.time()
                rows = longeval.position_ppl(model.float(), books, a.long_eval_tokens,
                                             stop_at=time.time() + a.deadline - since_start() - 15)
                meta["longeval_base"] = rows
                common.write_json(os.path.join(stage, "longeval_base.json"), rows)
                log("perplexity by position (PyTorch, fp32), base model, "
                    f"{len(books)} books ({time.time() - t:.0f}s):\n"
                    + longeval.format_table({"base": rows}, a.ctx))
                save(model, hist)
        except Exception:
            log("long evaluation failed (not fatal):\n" + traceback.format_exc())
    else:
        log(f"long evaluation skipped (dir {a.eval_books} present: "
            f"{os.path.isdir(a.eval_books)}, {left:.0f}s left)")

    summary.update({"steps": hist.get("steps"), "tokens": hist.get("tokens"),
                    "train_loss": hist.get("final_train_loss"), "val_loss": hist.get("final_val_loss"),
                    "tok_per_s": hist.get("mean_tok_per_s"), "n_params": n_params,
                    "base_sha256": meta.get("base", {}).get("sha256"),
                    "elapsed_s": since_start()})
    common.write_json(os.path.join(out, "summary.json"), summary)
    shutil.copyfile(os.path.join(stage, "call1.log"), os.path.join(out, "call1.log"))
    lines = ["", "==== call 1 summary ====", f"status      {summary['status']}",
             f"params      {n_params:,}", f"steps       {summary['steps']}",
             f"tokens      {summary['tokens']}",
             f"tok/s       {summary['tok_per_s'] or 0:.0f}",
             f"train loss  {summary['train_loss']}", f"val loss    {summary['val_loss']}",
             f"val ppl     {math.exp(summary['val_loss']) if summary['val_loss'] else None}",
             f"elapsed     {since_start():.0f}s", f"out files   {sorted(os.listdir(out))}"]
    for ln in lines:
        log(ln)
    shutil.copyfile(os.path.join(stage, "call1.log"), os.path.join(out, "call1.log"))
    shutil.rmtree(stage, ignore_errors=True)
    return 0 if summary["status"] == "trained" else 1


if __name__ == "__main__":
    sys.exit(main())
