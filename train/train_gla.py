"""One device call for GLA (train/gla.py): encode the corpus with the shipped tokenizer,
pre-train at context 512 from zero states until --pre-deadline, post-train with State
Passing (--post-steps at the same context; the conv windows travel with S), then, time
permitting, the same steps from zero states (the "more steps" control); validation
perplexity, perplexity by position on the evaluation books, samples, export in fla's
format. Output ($OUT):

  gla.tar.partNN + gla.manifest.json   a tree to unpack at the repository root:
      models/recur-gla-sp/     config.json (fla GLAConfig + training_context),
                               model.safetensors (bf16, fla names), tokenizer.json, README.md
      models/recur-gla-base/   the same for the pre-trained base (numbers in the SP card)
      train/results/gla/       report.md, longeval.json, samples.md, train_log.jsonl,
                               summary.json, gla.log
  gla.log, summary.json        readable without unpacking

The tar is re-packed after pre-training checkpoints, after State Passing and at the end,
so a call cut short still returns a model.
Unpack: python3 train/pack.py unpack --from FILES_AT --name gla --to /tmp/gla
"""
import argparse
import copy
import math
import os
import shutil
import sys
import tempfile
import time
import traceback

import torch

import common
import corpus
import export
import gla
import longeval
import pack
import sample
from common import Log, since_start
from pretrain_base import load_eval_books
from trainer import TrainArgs, evaluate, pick_device, train

SP_NAME, BASE_NAME = "recur-gla-sp", "recur-gla-base"
SIZE_LIMIT = 16e6


def parse(argv):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=".data/train.txt.xz")
    ap.add_argument("--tokenizer", default=".data/tokenizer.json",
                    help="the shipped tokenizer (models/recur-sp/tokenizer.json)")
    ap.add_argument("--eval-books", default=".data/dev_eval")
    ap.add_argument("--out", default=os.environ.get("OUT", "out/gla"))
    ap.add_argument("--n-val", type=int, default=6)
    ap.add_argument("--val-windows", type=int, default=128)
    # model
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--expand-k", type=float, default=0.5)
    ap.add_argument("--expand-v", type=float, default=1.0)
    ap.add_argument("--hidden-ratio", type=int, default=4)
    ap.add_argument("--intermediate", type=int, default=0, help="0: fla's default")
    ap.add_argument("--conv-size", type=int, default=4)
    ap.add_argument("--no-conv", action="store_true")
    ap.add_argument("--untied", action="store_true")
    ap.add_argument("--chunk", type=int, default=32)
    ap.add_argument("--sub-chunk", type=int, default=8)
    # pre-training
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--min-lr-ratio", type=float, default=0.1)
    ap.add_argument("--wd", type=float, default=0.1)
    ap.add_argument("--pre-deadline", type=float, default=330,
                    help="seconds after the call's start at which pre-training stops")
    ap.add_argument("--max-steps", type=int, default=0)
    # post-training
    ap.add_argument("--variants", default="sp,zero", help="post-training runs in order "
                    "('sp' is shipped; 'zero' = the same steps from zero states, the control)")
    ap.add_argument("--post-steps", type=int, default=500)
    ap.add_argument("--post-lr", type=float, default=5e-4)
    ap.add_argument("--post-warmup", type=int, default=50)
    ap.add_argument("--post-min-lr-ratio", type=float, default=0.1)
    ap.add_argument("--pass-conv", type=int, default=1)
    ap.add_argument("--min-pre", type=float, default=120, help="pre-train at least this long "
                    "whatever the probe says")
    ap.add_argument("--post-overhead", type=float, default=45, help="seconds kept besides State "
                    "Passing's steps (val evals, long eval of base and SP, packing) when the "
                    "step-time probe moves --pre-deadline earlier")
    # clock, evaluation, output
    ap.add_argument("--deadline", type=float, default=540,
                    help="seconds after the call's start by which everything is in $OUT")
    ap.add_argument("--reserve", type=float, default=35,
                    help="seconds kept at the end for samples, export and packing")
    ap.add_argument("--long-eval-tokens", type=int, default=262144)
    ap.add_argument("--long-eval-books", type=int, default=12)
    ap.add_argument("--long-eval-seg", type=int, default=8192)
    ap.add_argument("--log-every", type=int, default=100)
    ap.add_argument("--eval-every", type=int, default=1000)
    ap.add_argument("--ckpt-every", type=float, default=120)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--max-books", type=int, default=0, help="dry runs: the first N books")
    ap.add_argument("--mock-hf", action="store_true", help="CPU dry run without HF tokenizers")
    return ap.parse_args(argv)


def probe_step_time(model, sampler, a, dev, n=8, skip=3):
    """Seconds per training step of a throwaway copy (also warms up CUDA/cuBLAS)."""
    from trainer import autocast_ctx, lm_loss, make_optimizer
    m = copy.deepcopy(model).train()
    ta = TrainArgs()
    opt = make_optimizer(m, ta, dev)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    t0 = None
    for i in range(n):
        if i == skip:
            sync()
            t0 = time.time()
        x, y, _ = sampler.next()
        with autocast_ctx(ta, dev):
            loss = lm_loss(m(x)[0], y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    sync()
    dt = (time.time() - t0) / (n - skip)
    del m, opt
    if dev.type == "cuda":
        torch.cuda.empty_cache()
    return dt


@torch.no_grad()
def round_bf16_(model):
    """Keep the weights in float32 but at bf16 values: what the export ships."""
    for p in model.parameters():
        p.copy_(p.to(torch.bfloat16).to(p.dtype))
    return model


def main(argv=None):
    a = parse(argv)
    stage = tempfile.mkdtemp(prefix="recur_gla_")
    res = os.path.join(stage, "train", "results", "gla")
    log = Log(os.path.join(res, "gla.log"))
    out = a.out
    os.makedirs(out, exist_ok=True)
    common.need(a.data, "corpus (copy /work/shared/data/gutenberg/train.txt.xz to .data/)")
    common.need(a.tokenizer, "tokenizer (copy models/recur-sp/tokenizer.json to .data/)")
    common.seed_all(a.seed)
    dev = pick_device(a.device)
    vers = common.versions()
    log(f"gla: device {dev} {vers.get('gpu', '')}; versions {vers}; args {vars(a)}")
    summary = {"call": "gla", "versions": vers, "status": "started", "warnings": [],
               "variants": {}}
    warn = lambda m: (summary["warnings"].append(m), log("WARNING: " + m))  # noqa: E731
    tok_path = os.path.join(tempfile.mkdtemp(prefix="recur_gla_tok_"), "tokenizer.json")
    shutil.copyfile(a.tokenizer, tok_path)

    data = corpus.prepare(a.data, a.n_val, tok_path, a.mock_hf, learn=False,
                          max_books=a.max_books or None, log=log)
    tok = data["tok"]
    log(f"tokenizer {a.tokenizer}: {tok.kind}, vocab {tok.vocab_size}, <|endoftext|> = {tok.eot_id}")
    cfg = gla.GLAConfig(hidden_size=a.hidden, num_hidden_layers=a.layers, num_heads=a.heads,
                        vocab_size=tok.vocab_size, expand_k=a.expand_k, expand_v=a.expand_v,
                        hidden_ratio=a.hidden_ratio, intermediate_size=a.intermediate,
                        use_short_conv=not a.no_conv, conv_size=a.conv_size,
                        tie_word_embeddings=not a.untied, bos_token_id=tok.eot_id,
                        eos_token_id=tok.eot_id, chunk_size=a.chunk, sub_chunk=a.sub_chunk)
    torch.manual_seed(a.seed)
    model = gla.GLALM(cfg).init_weights(a.seed).to(dev)
    n_params = model.n_params()
    n_export = sum(v.numel() for v in gla.fla_tensors(model).values())
    log(f"model {cfg.to_fla(a.ctx)}: {n_params:,} params, {n_export * 2 / 1e6:.2f} MB bf16 exported")
    if n_export * 2 > SIZE_LIMIT:
        warn(f"the model is {n_export * 2 / 1e6:.1f} MB in bf16 > {SIZE_LIMIT / 1e6:.0f} MB")
    sampler = corpus.WindowSampler(data["train"], a.ctx, a.batch, a.seed, dev)
    val_w = corpus.fixed_windows(data["val"], a.ctx, a.val_windows, a.seed + 1)
    dat = {"n_books": data["n_books"], "n_val": a.n_val, "text_mb": data["text_bytes"] / 1e6,
           "train_tokens": int(len(data["train"])), "val_tokens": int(len(data["val"])),
           "val_titles": data["val_titles"], "tokenizer": tok.kind}
    summary.update(n_params=n_params, export_bytes=n_export * 2, data=dat)
    jsonl = open(os.path.join(res, "train_log.jsonl"), "w")
    hists, models, long, vals = {}, {}, {}, {}

    def pack_now(why):
        t = time.time()
        common.write_json(os.path.join(res, "summary.json"), summary)
        jsonl.flush()
        man = pack.pack(stage, out, "gla")
        shutil.copyfile(os.path.join(res, "gla.log"), os.path.join(out, "gla.log"))
        common.write_json(os.path.join(out, "summary.json"), summary)
        log(f"packed ({why}): {man['tar_bytes'] / 1e6:.1f} MB in {len(man['parts'])} parts "
            f"({time.time() - t:.1f}s)")

    def export_all(samples_md=None):
        for name, key in ((SP_NAME, "sp"), (BASE_NAME, "base")):
            if key not in models:
                continue
            card = export.gla_model_card(name, key, cfg, n_params, dat, a, hists, vals, long,
                                         samples_md if key == "sp" else None, vers.get("gpu"))
            d = os.path.join(stage, "models", name)
            info = export.export_dir(models[key], d, tok_path, card,
                                     save=lambda m, dd, dt, md: gla.save_fla(
                                         m, dd, dt, md, training_context=a.ctx))
            summary.setdefault("exported", {})[name] = {"bytes": info["bytes"], "sha256": info["sha256"]}
            log(f"exported {name}: {info['bytes'] / 1e6:.2f} MB, sha256 {info['sha256'][:16]}")

    def ckpt(m, h):
        """Periodic pre-training checkpoint: the base as it is now."""
        hists["base"] = h
        models["base"] = m
        export_all()
        pack_now(f"pre-training step {h['steps']}")

    # ------------------------------------------------------------ pre-training
    pre_deadline = a.pre_deadline
    try:  # keep State Passing's steps (and the evaluations) inside the deadline
        step_s = probe_step_time(model, sampler, a, dev)
        post_s = step_s * a.post_steps * 1.1 + a.post_overhead
        pre_deadline = min(a.pre_deadline, a.deadline - a.reserve - post_s)
        pre_deadline = max(pre_deadline, since_start() + a.min_pre)
        summary["probe_step_s"] = step_s
        log(f"probe: {step_s * 1e3:.0f} ms a step ({a.batch * a.ctx / step_s / 1e3:.0f}k tokens/s): "
            f"State Passing needs ~{post_s:.0f}s with evaluations; pre-training until "
            f"{pre_deadline:.0f}s")
    except Exception:
        warn("step-time probe failed: " + traceback.format_exc())
    budget = pre_deadline - since_start()
    log(f"pre-training budget {budget:.0f}s (until {pre_deadline:.0f}s; now {since_start():.0f}s)")
    if budget < 5:
        sys.exit("FATAL: no time left for pre-training")
    ta = TrainArgs(lr=a.lr, warmup=a.warmup, min_lr_ratio=a.min_lr_ratio, wd=a.wd,
                   budget_s=budget, max_steps=a.max_steps, log_every=a.log_every,
                   eval_every=a.eval_every, ckpt_every_s=a.ckpt_every, init_state="zero",
                   seed=a.seed)
    try:
        h = train(model, sampler, val_w, ta, dev, log=log, ckpt_fn=ckpt, jsonl=jsonl, tag="pretrain")
        summary["status"] = "pre-trained"
    except Exception:
        warn("PRE-TRAINING FAILED:\n" + traceback.format_exc())
        summary["status"] = "pre-training failed"
        h = hists.get("base", {"steps": 0, "tokens": 0, "seconds": 0})
    h["gpu"] = vers.get("gpu", str(dev))
    hists["base"] = h
    base = round_bf16_(model).eval()
    models["base"] = base
    vals["base"] = evaluate(base, val_w, a.batch, ta, dev)
    log(f"base (bf16 weights): val loss {vals['base']:.4f} (ppl {math.exp(vals['base']):.2f})")
    summary["base"] = {"steps": h.get("steps"), "tokens": h.get("tokens"),
                       "seconds": h.get("seconds"), "val_loss": vals["base"],
                       "tok_per_s": h.get("mean_tok_per_s")}
    export_all()
    pack_now("base")

    # ----------------------------------------------------------- evaluation books
    books = []
    if os.path.isdir(a.eval_books):
        try:
            books = load_eval_books(a.eval_books, tok, a.long_eval_books, log)
        except Exception:
            warn("evaluation books failed to load: " + traceback.format_exc())
    long_s = {}
    n_books_used = []

    def long_eval(names):
        """Perplexity by position for several models on the same books, book by book, until
        the clock says stop (the first book is always done)."""
        names = [n for n in names if n in models]
        if not books or not names:
            return
        t = time.time()
        stop = time.time() + a.deadline - a.reserve - since_start()
        limit = n_books_used[0] if n_books_used else len(books)   # later models: same books
        per = {n: [] for n in names}
        try:
            for ids in books[:limit]:
                if per[names[0]] and time.time() > stop:
                    break
                for n in names:
                    lp = longeval.token_logprobs(models[n], ids[:a.long_eval_tokens], seg=a.long_eval_seg)
                    per[n].append(longeval.bucket_stats(lp))
        except Exception:
            warn(f"long eval of {names} failed: " + traceback.format_exc())
        k = min(len(v) for v in per.values())
        if not k:
            return
        if not n_books_used:
            n_books_used.append(k)
        for n in names:
            long[n] = longeval.aggregate(per[n][:k])
            long_s[n] = (time.time() - t) / len(names)
        summary["long_eval_books"] = k
        common.write_json(os.path.join(res, "longeval.json"), long)
        log(f"long eval {names} ({time.time() - t:.0f}s, {k} books, first {a.long_eval_tokens} "
            f"tokens each):\n" + longeval.format_table(long, a.ctx))

    # ------------------------------------------------------------- post-training
    variants = [v for v in a.variants.split(",") if v]
    per_variant = None
    for i, v in enumerate(variants):
        left = a.deadline - a.reserve - since_start()
        need = (per_variant or 0) * 1.15 + (long_s.get("base", 0) if v != "sp" else 0)
        if i > 0 and left < need:
            warn(f"skipping variant {v}: {left:.0f}s left, a variant took {per_variant:.0f}s")
            continue
        t = time.time()
        m = copy.deepcopy(base).train()
        tp = TrainArgs(lr=a.post_lr, warmup=a.post_warmup, min_lr_ratio=a.post_min_lr_ratio,
                       wd=a.wd, budget_s=max(5.0, left - 20), max_steps=a.post_steps,
                       log_every=max(10, a.log_every // 2), eval_every=0, init_state=v,
                       pass_conv=bool(a.pass_conv), seed=a.seed + 1 + i, ckpt_every_s=1e9)
        ps = corpus.WindowSampler(data["train"], a.ctx, a.batch, a.seed + 100 * (i + 1), dev)
        try:
            hv = train(m, ps, None, tp, dev, log=log, jsonl=jsonl, tag=f"post-{v}")
        except Exception:
            warn(f"post-training {v} failed: " + traceback.format_exc())
            continue
        models[v] = round_bf16_(m).eval()
        hists[v] = hv
        vals[v] = evaluate(models[v], val_w, a.batch, tp, dev)
        log(f"post-{v} (bf16 weights): val loss {vals[v]:.4f} (ppl {math.exp(vals[v]):.2f})")
        per_variant = max(per_variant or 0, time.time() - t)
        summary["variants"][v] = {"steps": hv["steps"], "tokens": hv["tokens"],
                                  "val_loss": vals[v], "seconds": time.time() - t,
                                  "stop_reason": hv.get("stop_reason")}
        if v == "sp":
            summary["status"] = "post-trained"
            export_all()
            pack_now("State Passing")
            long_eval(["base", "sp"])
            export_all()
            pack_now("long eval")
        else:
            long_eval([v])
    if "sp" not in models:
        warn("no State-Passing model: only the base is exported")
        long_eval(["base"])

    # ------------------------------------------------------- samples and export
    samples_md = None
    try:
        shipped = models.get("sp", base)
        prompt, _, texts, _ = sample.continuations(shipped, tok, **{
            k: v for k, v in sample.SETTINGS.items() if k != "seed"}, seed=sample.SETTINGS["seed"])
        samples_md = sample.as_markdown(prompt, texts, sample.SETTINGS)
        md = ["# Samples", "", "## " + ("State Passing" if "sp" in models else "base"), "", samples_md]
        if "sp" in models:
            _, _, bt, _ = sample.continuations(base, tok, **{
                k: v for k, v in sample.SETTINGS.items() if k != "seed"}, seed=sample.SETTINGS["seed"])
            md += ["## base (same settings)", "", sample.as_markdown(prompt, bt, sample.SETTINGS)]
        with open(os.path.join(res, "samples.md"), "w") as f:
            f.write("\n".join(md))
        log("samples:\n" + samples_md)
    except Exception:
        warn("sampling failed: " + traceback.format_exc())
    export_all(samples_md)
    report = export.gla_report(cfg, a, hists, vals, long, summary)
    with open(os.path.join(res, "report.md"), "w") as f:
        f.write(report)
    summary["elapsed_s"] = since_start()
    if "sp" in models:
        summary["status"] = "done"
    log(report)
    log(f"==== gla summary ==== status {summary['status']}; params {n_params:,}; "
        f"val loss " + ", ".join(f"{k} {v:.4f}" for k, v in vals.items())
        + f"; warnings {len(summary['warnings'])}; elapsed {since_start():.0f}s")
    pack_now("final")
    jsonl.close()
    log(f"out files {sorted(os.listdir(out))}")
    shutil.copyfile(os.path.join(res, "gla.log"), os.path.join(out, "gla.log"))
    shutil.rmtree(stage, ignore_errors=True)
    return 0 if summary["status"] == "done" else 1


if __name__ == "__main__":
    sys.exit(main())
