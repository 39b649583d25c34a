"""Device call 2: post-train the base model from call 1 with State Passing (and, time
permitting, the other interventions for comparison), export both shipped checkpoints,
check parity against HF transformers, sample continuations. Output ($OUT):

  call2.tar.partNN + call2.manifest.json   a tree to unpack at the repository root:
      models/recur-sp/     config.json, model.safetensors (bf16), tokenizer.json, README.md
      models/recur-base/   the same for the base model
      tests/fixtures/parity/recur-sp/, .../recur-base/   reference.safetensors/json, README.md
      tests/fixtures/tokenizer/recur-sp/                 cases.json (HF ids of tricky strings)
      train/results/       report.md, longeval.json, post_log.jsonl, samples.md, call2.log
      data/dev_eval_ids/   the evaluation books as uint16 token ids (derived from shared
                           data: keep under .data/, never commit)
  call2.log, summary.json                  readable without unpacking

Inputs: --call1 (call 1's unpacked output), --data (a corpus file; .data/post.txt.xz from
`corpus.py subset`, or the full train.txt.xz), optional --eval-books (dev_eval *.txt.xz).
"""
import argparse
import copy
import glob
import json
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
import export
import longeval
import pack
import parity
import sample
from pretrain_base import load_eval_books
from common import Log, since_start
from trainer import TrainArgs, evaluate, pick_device, train


def parse(argv):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--call1", default=".data/call1")
    ap.add_argument("--data", default=".data/post.txt.xz")
    ap.add_argument("--eval-books", default=".data/dev_eval")
    ap.add_argument("--out", default=os.environ.get("OUT", "out/call2"))
    ap.add_argument("--variants", default="sp,fitted,tbtt,zero",
                    help="post-training runs in order; 'sp' is the shipped one")
    ap.add_argument("--post-steps", type=int, default=500)
    ap.add_argument("--post-lr", type=float, default=5e-4)
    ap.add_argument("--post-warmup", type=int, default=50)
    ap.add_argument("--post-min-lr-ratio", type=float, default=0.1)
    ap.add_argument("--pass-conv", type=int, default=1, help="1: pass/sample the conv window too")
    ap.add_argument("--deadline", type=float, default=540)
    ap.add_argument("--reserve", type=float, default=70, help="seconds kept for export, parity, "
                    "samples and packing")
    ap.add_argument("--long-eval-tokens", type=int, default=262144)
    ap.add_argument("--long-eval-books", type=int, default=12)
    ap.add_argument("--parity-tokens", type=int, default=512)
    ap.add_argument("--effrem-T", default="256,1024,4096")
    ap.add_argument("--effrem-points", type=int, default=16)
    ap.add_argument("--effrem-books", type=int, default=4)
    ap.add_argument("--log-every", type=int, default=50)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--seed", type=int, default=4321)
    ap.add_argument("--max-books", type=int, default=0)
    ap.add_argument("--mock-hf", action="store_true")
    return ap.parse_args(argv)


def main(argv=None):
    a = parse(argv)
    stage = tempfile.mkdtemp(prefix="recur_call2_")
    res = os.path.join(stage, "train", "results")
    log = Log(os.path.join(res, "call2.log"))
    out = a.out
    os.makedirs(out, exist_ok=True)
    c1 = a.call1
    for f in ("tokenizer.json", "meta.json", "base/config.json", "base/model.safetensors"):
        common.need(os.path.join(c1, f), "call 1 output (unpack call1.tar into .data/call1)")
    data_path = a.data
    if not os.path.exists(data_path) and os.path.exists(".data/train.txt.xz"):
        data_path = ".data/train.txt.xz"
    common.need(data_path, "corpus (.data/post.txt.xz from corpus.py subset, or train.txt.xz)")
    meta1 = common.read_json(os.path.join(c1, "meta.json"))
    args1 = meta1["args"]
    common.seed_all(a.seed)
    dev = pick_device(a.device)
    vers = common.versions()
    log(f"call2: device {dev} {vers.get('gpu', '')}; versions {vers}")
    summary = {"call": 2, "versions": vers, "warnings": [], "variants": {}}
    warn = lambda m: (summary["warnings"].append(m), log("WARNING: " + m))  # noqa: E731

    tok_path = os.path.join(c1, "tokenizer.json")
    if checkpoint.sha256_file(tok_path) != meta1["tokenizer_sha256"]:
        warn("tokenizer.json differs from the one call 1 recorded")
    base_st = os.path.join(c1, "base", "model.safetensors")
    if checkpoint.sha256_file(base_st) != meta1.get("base", {}).get("sha256"):
        warn("base/model.safetensors differs from the one call 1 recorded")
    mock = a.mock_hf or bool(args1.get("mock_hf"))
    data = corpus.prepare(data_path, args1["n_val"], tok_path, mock, learn=False,
                          max_books=a.max_books or None, log=log)
    tok = data["tok"]
    if data["val_sha256"] != meta1["data"]["val_sha256"]:
        warn("validation tokens differ from call 1's (different books or tokenizer)")
    ctx, batch = args1["ctx"], args1["batch"]

    base = checkpoint.load_dir(os.path.join(c1, "base"), torch.float32,
                               chunk_size=args1.get("chunk", 64)).to(dev)
    cfg = base.cfg
    n_params = base.n_params()
    val_w = corpus.fixed_windows(data["val"], ctx, args1["val_windows"], args1["seed"] + 1)
    ta_eval = TrainArgs()
    base_val = evaluate(base, val_w, batch, ta_eval, dev)
    log(f"base: {n_params:,} params, val loss {base_val:.4f} here vs "
        f"{meta1.get('pretrain', {}).get('final_val_loss')} in call 1 (fp32 master weights there)")
    eval_books = []
    if os.path.isdir(a.eval_books):
        eval_books = load_eval_books(a.eval_books, tok, a.long_eval_books, log)
    a.n_eval_books_used = len(eval_books)
    if eval_books:  # HF-tokenized evaluation books: `eval_books.py --ids`, and a check of
        d = os.path.join(stage, "data", "dev_eval_ids")  # recurd's own tokenizer
        os.makedirs(d, exist_ok=True)
        names = sorted(glob.glob(os.path.join(a.eval_books, "*.txt.xz")))[:a.long_eval_books]
        for fn, ids in zip(names, eval_books):
            ids.astype("<u2").tofile(os.path.join(d, os.path.basename(fn)[:-len(".txt.xz")] + ".u16"))
    long = {}

    def long_eval(name, model):
        if not eval_books:
            return None
        t = time.time()
        rows = longeval.position_ppl(model, eval_books, a.long_eval_tokens,
                                     stop_at=time.time() + a.deadline - since_start() - 30)
        long[name] = rows
        common.write_json(os.path.join(res, "longeval.json"), long)
        log(f"long eval {name} ({time.time() - t:.0f}s):\n"
            + longeval.format_table({k: long[k] for k in long}, ctx))
        return rows

    try:
        long_eval("base", base)
    except Exception:
        warn("long eval of base failed: " + traceback.format_exc())

    try:
        n = parity.tokenizer_fixture(tok, tok_path, os.path.join(stage, "tests", "fixtures",
                                                                  "tokenizer", "recur-sp"), mock,
                                     extra_texts=[sample.PROMPT])
        log(f"tokenizer fixture: {n} cases ({tok.kind})")
    except Exception:
        warn("tokenizer fixture failed: " + traceback.format_exc())

    # ------------------------------------------------------------ post-training
    jsonl = open(os.path.join(res, "post_log.jsonl"), "w")
    post_hist = {}
    models = {"base": base}
    per_variant_s = None
    variants = [v for v in a.variants.split(",") if v]
    for i, v in enumerate(variants):
        left = a.deadline - a.reserve - since_start()
        need_s = (per_variant_s or 0) * 1.2
        if i > 0 and left < need_s:
            warn(f"skipping variant {v}: {left:.0f}s left, a variant took {per_variant_s:.0f}s")
            continue
        t = time.time()
        m = copy.deepcopy(base).train()
        ta = TrainArgs(lr=a.post_lr, warmup=a.post_warmup, min_lr_ratio=a.post_min_lr_ratio,
                       wd=args1["wd"], budget_s=max(10.0, left - 15), max_steps=a.post_steps,
                       log_every=a.log_every, eval_every=0, init_state=v,
                       pass_conv=bool(a.pass_conv), seed=a.seed + i, ckpt_every_s=1e9)
        sampler_cls = corpus.StreamSampler if v == "tbtt" else corpus.WindowSampler
        sampler = sampler_cls(data["train"], ctx, batch, a.seed + 100 * i, dev)
        try:
            h = train(m, sampler, val_w, ta, dev, log=log, jsonl=jsonl, tag=f"post-{v}")
        except Exception:
            warn(f"post-training {v} failed: " + traceback.format_exc())
            continue
        post_hist[v] = h
        models[v] = m
        try:
            long_eval(v, m)
        except Exception:
            warn(f"long eval of {v} failed: " + traceback.format_exc())
        summary["variants"][v] = {"steps": h["steps"], "val_loss": h.get("final_val_loss"),
                                  "train_loss": h.get("final_train_loss"),
                                  "seconds": time.time() - t}
        per_variant_s = max(per_variant_s or 0, time.time() - t)
        if v == "sp":
            export_all(a, stage, models, post_hist, long, meta1, data, tok, tok_path, cfg,
                       n_params, ctx, log, samples_md=None)
            pack.pack(stage, out, "call2")
    jsonl.close()
    if "sp" not in models:
        warn("no State-Passing model: exporting the base model only")

    # -------------------------------------------------- samples, parity, export
    samples_md, par_ids = None, None
    shipped = models.get("sp", base)
    try:
        prompt, p_ids, texts, _ = sample.continuations(shipped, tok, **{
            k: v for k, v in sample.SETTINGS.items() if k != "seed"}, seed=sample.SETTINGS["seed"])
        samples_md = sample.as_markdown(prompt, texts, sample.SETTINGS)
        md = ["# Samples", "", "## " + ("State Passing" if "sp" in models else "base"), "",
              samples_md]
        if "sp" in models:
            _, _, btexts, _ = sample.continuations(base, tok, **{
                k: v for k, v in sample.SETTINGS.items() if k != "seed"},
                seed=sample.SETTINGS["seed"])
            md += ["## base (same settings)", "", sample.as_markdown(prompt, btexts, sample.SETTINGS)]
        with open(os.path.join(res, "samples.md"), "w") as f:
            f.write("\n".join(md))
        log("samples:\n" + samples_md)
        _, _, _, outs = sample.continuations(shipped, tok, n=1, temperature=1.0, top_p=1.0,
                                             max_new_tokens=a.parity_tokens, seed=7,
                                             stop_at_eot=False)
        par_ids = (list(p_ids) + outs[0])[:a.parity_tokens]
    except Exception:
        warn("sampling failed: " + traceback.format_exc())
    export_all(a, stage, models, post_hist, long, meta1, data, tok, tok_path, cfg, n_params,
               ctx, log, samples_md=samples_md)
    pack.pack(stage, out, "call2")
    if par_ids is None:
        par_ids = tok.encode_batch([sample.PROMPT * 8])[0][:a.parity_tokens]
    summary["parity"] = {}
    for name in ("recur-sp", "recur-base"):
        mdir = os.path.join(stage, "models", name)
        if not os.path.isdir(mdir):
            continue
        try:
            info = parity.run(mdir, par_ids, os.path.join(stage, "tests", "fixtures", "parity", name),
                              f"models/{name}", mock=mock, text=tok.decode(par_ids), log=log)
            summary["parity"][name] = {k: info[k] for k in (
                "ok", "reference", "max_abs_logprob_diff_model_py",
                "max_abs_full_logprob_diff_model_py", "ppl_reference")}
        except Exception:
            warn(f"parity {name} failed: " + traceback.format_exc())

    # ------------------------------------- Effective Remembrance (PyTorch preview)
    effrem = {}
    if eval_books and a.deadline - since_start() > 25:
        try:
            t = time.time()
            Ts = [int(x) for x in a.effrem_T.split(",") if x]
            for name in ("base", "sp"):
                if name not in models:
                    continue
                curves = [longeval.effrem(models[name], ids, Ts, a.effrem_points)
                          for ids in eval_books[:a.effrem_books]]
                effrem[name] = {str(T): [(c[T][k][0], sum(cv[T][k][1] for cv in curves) / len(curves))
                                         for k in range(len(c[T]))]
                                for c in curves[:1] for T in c}
            common.write_json(os.path.join(res, "effrem.json"), effrem)
            log(f"effective remembrance ({time.time() - t:.0f}s): "
                + json.dumps({n: {T: [round(v, 4) for _, v in pts] for T, pts in e.items()}
                              for n, e in effrem.items()}))
        except Exception:
            warn("effective remembrance failed: " + traceback.format_exc())

    # ------------------------------------------------------------------ report
    report = ["# Call 2 report", "", f"versions: {vers}", "",
              "| model | init state | steps | val loss | val ppl |", "|---|---|---|---|---|",
              f"| base | zero | {meta1.get('pretrain', {}).get('steps')} | {base_val:.4f} | "
              f"{math.exp(base_val):.2f} |"]
    for v, h in post_hist.items():
        vl = h.get("final_val_loss")
        report.append(f"| post-{v} | {v} | {h['steps']} | {vl:.4f} | {math.exp(vl):.2f} |")
    if long:
        report += ["", "Perplexity by position (PyTorch fp32, evaluation books, mean over books):",
                   "", longeval.format_table(long, ctx)]
    if effrem:
        report += ["", f"Effective Remembrance (PyTorch, mean over {a.effrem_books} evaluation "
                   "books; TV at t = k*T/points):", ""]
        for name, e in effrem.items():
            for T, pts in e.items():
                report.append(f"- {name} T={T}: " + ", ".join(f"t={t}: {v:.3f}" for t, v in pts))
    report += ["", "Warnings: " + ("; ".join(w.splitlines()[0] for w in summary["warnings"]) or "none")]
    with open(os.path.join(res, "report.md"), "w") as f:
        f.write("\n".join(report) + "\n")
    summary.update(base_val_loss=base_val, elapsed_s=since_start(), n_params=n_params)
    common.write_json(os.path.join(res, "summary.json"), summary)
    man = pack.pack(stage, out, "call2")
    common.write_json(os.path.join(out, "summary.json"), summary)
    log("\n".join(report))
    log("==== call 2 summary ====")
    for v, s in summary["variants"].items():
        log(f"post-{v:7s} steps {s['steps']:4d}  val loss {s['val_loss']:.4f}  {s['seconds']:.0f}s")
    for n, p in summary["parity"].items():
        log(f"parity {n}: ok={p['ok']} max|dlogp| {p['max_abs_full_logprob_diff_model_py']:.2e} "
            f"({p['reference']})")
    log(f"packed {man['tar_bytes'] / 1e6:.1f} MB in {len(man['parts'])} parts; "
        f"warnings {len(summary['warnings'])}; elapsed {since_start():.0f}s; "
        f"out files {sorted(os.listdir(out))}")
    shutil.copyfile(os.path.join(res, "call2.log"), os.path.join(out, "call2.log"))
    shutil.rmtree(stage, ignore_errors=True)
    return 0 if ("sp" in models and all(p["ok"] for p in summary["parity"].values())
                 and summary["parity"]) else 1


def export_all(a, stage, models, post_hist, long, meta1, data, tok, tok_path, cfg, n_params,
               ctx, log, samples_md):
    pre = dict(meta1.get("pretrain", {}))
    for k in ("steps", "tokens", "seconds"):
        pre.setdefault(k, 0)
    pre.update({k: meta1["args"][k] for k in ("ctx", "batch", "lr", "warmup", "min_lr_ratio",
                                              "wd", "seed")})
    pre.update(dt_min=meta1["args"].get("dt_min", 1e-3), dt_max=meta1["args"].get("dt_max", 0.1))
    pre.update(beta1=pre.get("args", {}).get("beta1", 0.9), beta2=pre.get("args", {}).get("beta2", 0.95),
               clip=pre.get("args", {}).get("clip", 1.0))
    d1 = meta1["data"]
    dat = {"n_books": d1["n_books"], "n_val": d1["n_val"], "text_mb": d1["text_mb"],
           "train_tokens": d1["train_tokens"], "val_tokens": d1["val_tokens"]}
    ev_cols = {k: long[k] for k in ("base", "sp") if k in long}
    evals = None
    if ev_cols:
        evals = ("Device-side check in PyTorch (float32, no TF32), mean over the "
                 f"{a.n_eval_books_used} evaluation books (dev_eval) of each book's perplexity in "
                 f"the bucket, first {a.long_eval_tokens} "
                 "tokens of each book, state carried across 8192-token segments:\n\n"
                 + longeval.format_table(ev_cols, ctx))
    post = None
    if "sp" in post_hist:
        h = post_hist["sp"]
        post = {"steps": h["steps"], "tokens": h["tokens"], "lr": a.post_lr, "warmup": a.post_warmup,
                "min_lr_ratio": a.post_min_lr_ratio, "pass_conv": bool(a.pass_conv),
                "final_train_loss": h.get("final_train_loss", float("nan")),
                "final_val_loss": h.get("final_val_loss", float("nan"))}
    pre.setdefault("final_train_loss", float("nan"))
    pre.setdefault("final_val_loss", float("nan"))
    for name, key, role in (("recur-sp", "sp", "sp"), ("recur-base", "base", "base")):
        if key not in models:
            continue
        card = export.model_card(name, role, cfg, n_params, dat, pre,
                                 post if role == "sp" else None, evals,
                                 samples_md if role == "sp" else None, tok.kind)
        info = export.export_dir(models[key], os.path.join(stage, "models", name), tok_path, card,
                                 training_context=pre["ctx"])
        log(f"exported {name}: {info['bytes'] / 1e6:.2f} MB, sha256 {info['sha256'][:16]}")
        if info["bytes"] > 24e6:
            log(f"WARNING: {name} is {info['bytes'] / 1e6:.1f} MB > 24 MB")


if __name__ == "__main__":
    sys.exit(main())
