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


def export_dir(model, d, tokenizer_path, card, dtype="bf16", metadata=None):
    import checkpoint  # torch is needed only to export, not to edit cards

    os.makedirs(d, exist_ok=True)
    sha = checkpoint.save_state_spaces(model, d, checkpoint.DTYPES[dtype], metadata)
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


def replace_eval_section(card, text):
    a, b = card.find(EVAL_BEGIN), card.find(EVAL_END)
    if a < 0 or b < 0:
        return card.rstrip("\n") + "\n\n" + EVAL_BEGIN + "\n" + text + "\n" + EVAL_END + "\n"
    return card[:a + len(EVAL_BEGIN)] + "\n" + text + "\n" + card[b:]
