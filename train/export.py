"""Export a trained model as a recurd/state-spaces model directory:

  config.json        MambaLMHeadModel layout (d_model, n_layer, ssm_cfg{layer: Mamba2...}, ...)
  model.safetensors  bf16 (or fp16) weights, state-spaces names, tied embedding (no lm_head)
  tokenizer.json     the HF tokenizer the model was trained with
  README.md          model card: data, recipe, steps, tokens seen, losses, evaluation, licence

The evaluation section carries the device-side PyTorch numbers; train/eval_books.py
later adds the C engine's (`recurd score`) between the <!-- recurd-eval --> markers.
"""
import math
import os
import shutil

EVAL_BEGIN = "<!-- recurd-eval:begin -->"
EVAL_END = "<!-- recurd-eval:end -->"


def export_dir(model, d, tokenizer_path, card, dtype="bf16", metadata=None, save=None,
               training_context=None):
    """save(model, d, torch_dtype, metadata) -> sha256 writes config.json + weights
    (default: the state-spaces Mamba-2 layout with training_context in config.json;
    gla.save_fla for GLA)."""
    import checkpoint  # torch is needed only to export, not to edit cards

    os.makedirs(d, exist_ok=True)
    save = save or (lambda m, dd, dt, md: checkpoint.save_state_spaces(
        m, dd, dt, md, training_context=training_context))
    sha = save(model, d, checkpoint.DTYPES[dtype], metadata)
    shutil.copyfile(tokenizer_path, os.path.join(d, "tokenizer.json"))
    with open(os.path.join(d, "README.md"), "w") as f:
        f.write(card)
    size = os.path.getsize(os.path.join(d, "model.safetensors"))
    return {"dir": d, "sha256": sha, "bytes": size}


def _fmt_tokens(n):
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.1f}M"


def model_card(name, role, cfg, n_params, data, pre, post=None, evals=None, samples_md=None,
               tokenizer_kind="", extra=None):
    """Markdown model card. data/pre/post/evals are dicts assembled by call1/call2."""
    c = cfg
    title = {"sp": "post-trained with State Passing (the default model)",
             "base": "base model (pre-training only; for comparison)"}[role]
    L = [f"# {name}: a {n_params / 1e6:.1f}M-parameter Mamba-2 {title}", ""]
    if role == "sp":
        L += ["A small Mamba-2 language model trained by the recurd project on public-domain "
              "English books, then post-trained with **State Passing** (Buitrago Ruiz & Gu, "
              "ICML 2025) so that it keeps working on streams far longer than its training "
              f"context of {pre['ctx']} tokens. It is the model recurd serves by default.", ""]
    else:
        L += ["The same model before post-training: pre-trained from zero states only, at a "
              f"context of {pre['ctx']} tokens. Shipped to show what State Passing fixes.", ""]
    L += ["## Architecture", "",
          "| d_model | layers | d_inner | d_state | headdim | heads | ngroups | d_conv | vocab (rows) | parameters | weights |",
          "|---|---|---|---|---|---|---|---|---|---|---|",
          f"| {c.d_model} | {c.n_layer} | {c.d_inner} | {c.d_state} | {c.headdim} | {c.nheads} | "
          f"{c.ngroups} | {c.d_conv} | {c.vocab_size} ({c.n_vocab}) | {n_params:,} | bf16, tied embedding |",
          "",
          "mamba_ssm `Mamba2` blocks with defaults (no MLP, no attention), RMSNorm, residual in "
          "fp32, state-spaces naming (`MambaLMHeadModel` config.json).", "",
          "Why this size: a shipped checkpoint must stay under 24 MB in bf16, about 11.5M "
          f"parameters including the embedding. A {c.vocab_size}-token vocabulary keeps the "
          f"embedding at {c.n_vocab * c.d_model / 1e6:.1f}M parameters and leaves the rest to "
          f"{c.n_layer} blocks of width {c.d_model}, with Mamba-2's default d_state "
          f"{c.d_state} and headdim {c.headdim}: deeper-and-narrower beats wider-and-shallower "
          "at this scale, and the whole recipe (tokenizer, pre-training, four post-training "
          "runs) fits in two 9-minute GPU calls.", ""]
    L += ["## Data", "",
          f"{data['n_books']} public-domain (USA) Project Gutenberg books (headers and licence "
          f"footers removed); training on {data['n_books'] - data['n_val']} of them, "
          f"{data['text_mb']:.1f} MB of text, {_fmt_tokens(data['train_tokens'])} "
          f"tokens; {data['n_val']} books held out for validation ({_fmt_tokens(data['val_tokens'])} "
          "tokens), chosen by SHA-1 of their text. The 12 evaluation books (dev_eval) are not in "
          "the training set.", "",
          f"Tokenizer: byte-level BPE learned on the training books with HF `tokenizers` "
          f"({tokenizer_kind}): NFC normaliser, GPT-2 regex pre-tokenizer, vocab "
          f"{c.vocab_size}, `<|endoftext|>` = id 0 separates books.", ""]
    L += ["## Training recipe", "",
          f"- Pre-training: {pre['steps']:,} steps of {pre['batch']} random windows x "
          f"{pre['ctx']} tokens from zero states, {_fmt_tokens(pre['tokens'])} tokens seen "
          f"(~{pre['tokens'] / max(1, data['train_tokens']):.1f} epochs); AdamW (betas "
          f"{pre['beta1']}, {pre['beta2']}; weight decay {pre['wd']} on matrices), peak lr "
          f"{pre['lr']:g}, {pre['warmup']} warmup steps then cosine to {pre['min_lr_ratio']:g}x, "
          f"clip {pre['clip']}, bf16 autocast with fp32 scan/state math; dt initialised "
          f"log-uniform in [{pre.get('dt_min', 1e-3):g}, {pre.get('dt_max', 0.1):g}] and A uniform "
          "in [1, 16] (mamba_ssm's defaults are dt in [0.001, 0.1]); "
          f"{pre['seconds'] / 60:.1f} min on one {pre.get('gpu', 'GPU')} "
          f"({pre.get('mean_tok_per_s', 0) / 1e3:.0f}k tokens/s).", ]
    if post:
        L += [f"- Post-training (State Passing): {post['steps']} steps at the same batch and "
              f"context; each layer's initial SSM state{' and conv window' if post['pass_conv'] else ''} "
              f"is the detached final state of the previous batch (the first batch starts at "
              f"zero); {_fmt_tokens(post['tokens'])} tokens; peak lr {post['lr']:g}, "
              f"{post['warmup']} warmup steps, cosine to {post['min_lr_ratio']:g}x.", ]
    L += [f"- Code: `train/` in the recurd repository (`train/README.md`), seed {pre.get('seed')}.", ""]
    L += ["## Losses", "",
          "| stage | train loss (last interval) | validation loss | validation ppl |",
          "|---|---|---|---|",
          f"| pre-training | {pre['final_train_loss']:.3f} | {pre['final_val_loss']:.3f} | "
          f"{math.exp(pre['final_val_loss']):.2f} |"]
    if post:
        L.append(f"| State Passing | {post['final_train_loss']:.3f} | {post['final_val_loss']:.3f} | "
                 f"{math.exp(post['final_val_loss']):.2f} |")
    L += ["", f"Validation: {pre.get('val_windows', '?')} fixed windows of {pre['ctx']} tokens "
          "from the held-out books, zero initial state.", ""]
    L += ["## Evaluation: perplexity by position", ""]
    if evals:
        L += [evals, ""]
    L += [EVAL_BEGIN, "(C engine results: run `train/eval_books.py`.)", EVAL_END, ""]
    if samples_md:
        L += ["## Samples", "", samples_md, ""]
    if extra:
        L += [extra, ""]
    L += ["## Licence", "",
          "The weights were trained from scratch by the recurd project and are distributed "
          "under the licence of the recurd repository. The training text is public-domain (in "
          "the USA) Project Gutenberg material with the Project Gutenberg headers and licence "
          "removed; no Gutenberg trademark is used.", ""]
    return "\n".join(L)


def _ppl(loss):
    return f"{math.exp(loss):.2f}" if loss is not None and math.isfinite(loss) else "n/a"


def _loss(loss):
    return f"{loss:.3f}" if loss is not None and math.isfinite(loss) else "n/a"


def length_effect(long, ctx):
    """{model: (ref bucket, ref ppl, last bucket, last ppl, worst ratio past ctx)} from
    longeval rows: the reference is the last bucket inside the training context."""
    out = {}
    for name, rows in long.items():
        ref = next((r for r in rows if r["end"] == ctx), None)
        past = [r for r in rows if r["start"] >= ctx]
        if not ref or not past:
            continue
        last = past[-1]
        worst = max(r["ppl_mean"] / ref["ppl_mean"] for r in past)
        out[name] = ((ref["start"], ref["end"]), ref["ppl_mean"], (last["start"], last["end"]),
                     last["ppl_mean"], worst)
    return out


def length_lines(long, ctx, labels=None):
    labels = labels or {}
    lines = []
    for name, (rb, rp, lb, lp, worst) in length_effect(long, ctx).items():
        lines.append(f"- {labels.get(name, name)}: [{lb[0]}, {lb[1]}) has {lp / rp:.2f}x the "
                     f"perplexity of [{rb[0]}, {rb[1]}) ({lp:.2f} vs {rp:.2f}); worst bucket past "
                     f"the training context {worst:.2f}x")
    return lines


def gla_model_card(name, role, cfg, n_params, data, a, hists, vals, long, samples_md=None,
                   gpu=None):
    """Markdown model card of a GLA export (train/train_gla.py). hists/vals/long: per run
    ("base", "sp", "zero") the trainer history, validation loss, position-wise rows."""
    c = cfg
    ctx = a.ctx
    pre = hists.get("base", {})
    sp = hists.get("sp")
    title = {"sp": "Gated Linear Attention model post-trained with State Passing",
             "base": "Gated Linear Attention base model (pre-training only; for comparison)"}[role]
    L = [f"# {name}: a {n_params / 1e6:.1f}M-parameter {title}", ""]
    if role == "sp":
        L += ["A small GLA (Yang et al., ICML 2024) language model trained by the recurd project "
              "on public-domain English books at a context of "
              f"{ctx} tokens, then post-trained with **State Passing** (Buitrago Ruiz & Gu, ICML "
              "2025): each training sequence starts from the final recurrent state (and short-conv "
              "windows) of another, so that the model sees the states a long stream reaches.", ""]
    else:
        L += ["The same model before post-training: pre-trained from zero states only, at a "
              f"context of {ctx} tokens. Kept to show what State Passing changes.", ""]
    L += ["## Architecture and format", "",
          "| hidden | layers | heads | key dim (per head) | value dim (per head) | MLP | short conv | vocab | parameters | weights |",
          "|---|---|---|---|---|---|---|---|---|---|",
          f"| {c.hidden_size} | {c.num_hidden_layers} | {c.num_heads} | {c.key_dim} ({c.head_k}) | "
          f"{c.value_dim} ({c.head_v}) | SwiGLU {c.intermediate_size} | "
          f"{('kernel ' + str(c.conv_size)) if c.use_short_conv else 'none'} | {c.vocab_size} | "
          f"{n_params:,} | bf16, {'tied' if c.tie_word_embeddings else 'separate'} embedding |", "",
          "fla's `GLAForCausalLM` (flash-linear-attention): per block `h = x + attn(attn_norm(x))`, "
          "`x = h + mlp(mlp_norm(h))` with RMSNorm; the attention has a low-rank (16) forget "
          "gate `gk = logsigmoid(gk_proj(x)) / 16`, state update `S_t = diag(exp(gk_t)) S_(t-1) "
          "+ k_t^T v_t`, output `(q_t / sqrt(d_k)) S_t`, a per-head RMSNorm gated by "
          "`swish(g_proj(x))` and `o_proj`; short causal convolutions (silu) on q, k and v. "
          "Weights carry fla's names (`model.layers.N.attn.q_proj.weight`, ...) and config.json "
          "is fla's `GLAConfig` (`model_type: gla`) plus `training_context`. The recurrent state "
          f"per layer is {c.num_heads} x {c.head_k} x {c.head_v} floats (plus the conv windows).", "",
          f"Size: {n_params:,} parameters = {n_params * 2 / 1e6:.1f} MB in bf16 (a 16 MB budget "
          f"with the shipped {c.vocab_size}-token vocabulary; the embedding takes "
          f"{c.vocab_size * c.hidden_size / 1e6:.1f}M).", ""]
    L += ["## Data", "",
          f"{data['n_books']} public-domain (USA) Project Gutenberg books (headers and licence "
          f"footers removed); training on {data['n_books'] - data['n_val']} of them, "
          f"{data['text_mb']:.1f} MB of text, {_fmt_tokens(data['train_tokens'])} tokens; "
          f"{data['n_val']} books held out for validation ({_fmt_tokens(data['val_tokens'])} "
          "tokens), chosen by SHA-1 of their text, the same split as recur-sp. The 12 evaluation "
          "books (dev_eval) are not in the training set.", "",
          f"Tokenizer: recur-sp's byte-level BPE (vocab {c.vocab_size}, `<|endoftext|>` = id 0), "
          "so perplexities compare with the Mamba-2 models.", ""]
    rec = ["## Training recipe", ""]
    if pre.get("steps"):
        rec.append(f"- Pre-training: {pre['steps']:,} steps of {a.batch} random windows x {ctx} "
                   f"tokens from zero states, {_fmt_tokens(pre.get('tokens', 0))} tokens seen; "
                   f"AdamW (0.9, 0.95; weight decay {a.wd} on matrices), peak lr {a.lr:g}, "
                   f"{a.warmup} warmup steps then cosine to {a.min_lr_ratio:g}x, clip 1.0, bf16 "
                   "autocast with fp32 state math (chunkwise form, chunks of "
                   f"{c.chunk_size}, sub-chunks of {c.sub_chunk}); "
                   f"{pre.get('seconds', 0) / 60:.1f} min on one {gpu or 'GPU'} "
                   f"({pre.get('mean_tok_per_s', 0) / 1e3:.0f}k tokens/s).")
    if sp:
        rec.append(f"- Post-training (State Passing): {sp['steps']} steps at the same batch and "
                   "context; each layer's initial state S"
                   f"{' and conv windows' if a.pass_conv else ''} is the detached final state of the "
                   f"previous batch (the first batch starts at zero); {_fmt_tokens(sp['tokens'])} "
                   f"tokens; peak lr {a.post_lr:g}, {a.post_warmup} warmup steps, cosine to "
                   f"{a.post_min_lr_ratio:g}x.")
    if hists.get("zero"):
        rec.append(f"- Control (not shipped): the same {hists['zero']['steps']} post-training "
                   "steps from zero states, to separate \"more training\" from State Passing.")
    rec.append(f"- Code: `train/train_gla.py`, `train/gla.py` (`train/README.md`), seed {a.seed}.")
    L += rec + [""]
    L += ["## Losses", "", "| model | validation loss | validation ppl |", "|---|---|---|"]
    for k, label in (("base", "base (pre-training)"), ("sp", "State Passing"),
                     ("zero", "control: same steps from zero states")):
        if k in vals:
            L.append(f"| {label} | {_loss(vals[k])} | {_ppl(vals[k])} |")
    L += ["", f"Validation: {a.val_windows} fixed windows of {ctx} tokens from the held-out "
          "books, zero initial state, bf16-rounded weights.", ""]
    L += ["## Evaluation: perplexity by position", ""]
    cols = {k: long[k] for k in ("base", "sp", "zero") if k in long}
    if cols:
        import longeval
        nb = max(r["books"] for rows in cols.values() for r in rows)
        L += [f"PyTorch, float32 (no TF32), the shipped bf16 weights, mean over {nb} evaluation "
              f"books (dev_eval) of each book's perplexity in the bucket, first {a.long_eval_tokens} "
              f"tokens of each book, state carried across {a.long_eval_seg}-token segments "
              "(`zero` is the control):", "", longeval.format_table(cols, ctx), ""]
        L += length_lines(cols, ctx, {"base": "base", "sp": "State Passing", "zero": "control"}) + [""]
    L += [EVAL_BEGIN, "(C engine results: run `train/eval_books.py`.)", EVAL_END, ""]
    if samples_md:
        L += ["## Samples", "", samples_md, ""]
    L += ["## Licence", "",
          "The weights were trained from scratch by the recurd project and are distributed "
          "under the licence of the recurd repository. The training text is public-domain (in "
          "the USA) Project Gutenberg material with the Project Gutenberg headers and licence "
          "removed; no Gutenberg trademark is used.", ""]
    return "\n".join(L)


def gla_report(cfg, a, hists, vals, long, summary):
    import longeval
    L = ["# GLA run report", "", f"versions: {summary.get('versions')}", "",
         f"model: {cfg.to_fla(a.ctx)}", f"parameters: {summary.get('n_params')}", "",
         "| run | steps | tokens | seconds | val loss | val ppl |", "|---|---|---|---|---|---|"]
    for k in ("base", "sp", "zero"):
        h = hists.get(k)
        if h is None:
            continue
        L.append(f"| {k} | {h.get('steps')} | {h.get('tokens')} | {h.get('seconds', 0):.0f} | "
                 f"{_loss(vals.get(k))} | {_ppl(vals.get(k))} |")
    if long:
        L += ["", "Perplexity by position (PyTorch fp32, bf16 weights, mean over books):", "",
              longeval.format_table(long, a.ctx), ""] + length_lines(long, a.ctx)
    L += ["", "Warnings: " + ("; ".join(w.splitlines()[0] for w in summary["warnings"]) or "none"), ""]
    return "\n".join(L)


def replace_eval_section(card, text):
    a, b = card.find(EVAL_BEGIN), card.find(EVAL_END)
    if a < 0 or b < 0:
        return card.rstrip("\n") + "\n\n" + EVAL_BEGIN + "\n" + text + "\n" + EVAL_END + "\n"
    return card[:a + len(EVAL_BEGIN)] + "\n" + text + "\n" + card[b:]
