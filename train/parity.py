"""Parity of an exported checkpoint: our model.py vs HF transformers' Mamba2ForCausalLM.

Both load the exported (bf16) state-spaces checkpoint; transformers gets the weights
renamed to its naming (backbone.embeddings.weight, tied lm_head) and a Mamba2Config
built from ours (chunk_size 64 keeps its naive SSD's intermediates small), and runs on the CPU in float64 (its SSD path computes in float32),
so neither TF32 nor a GPU kernel choice blurs the reference. Ours runs in float32 on
the CPU, as the C engine does.

The fixture written for the C test (tests/fixtures/parity/<name>/):
  reference.safetensors  input_ids (I32, n), logprobs (F32, n-1: log p(ids[t+1] | ids[..t])
                         from transformers), positions (I32, k), logits (F32, k x n_vocab:
                         transformers' raw logits after reading ids[..positions[i]])
  reference.json         model dir (relative to the repo root, weights are not copied), its
                         sha256, versions, tolerances, our max deviation
  README.md              how it was made

--mock-hf (CPU dry runs without transformers) uses our float64 step recurrence as the
stand-in reference and marks the fixture MOCK: never commit one of those.
"""
import json
import math
import os

import numpy as np
import torch

import checkpoint
import stio

TOL_OURS = 1e-3      # max |log p| difference, model.py fp32 vs transformers: fail above
TOL_ENGINE = 2e-3    # suggested for recurd score (fp32 C engine) vs this fixture


def hf_model(model_dir, vocab_rows, cfg):
    """transformers Mamba2ForCausalLM holding the exported weights, float64, eval."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import transformers
    hcfg = transformers.Mamba2Config(
        vocab_size=vocab_rows, hidden_size=cfg.d_model, state_size=cfg.d_state,
        num_hidden_layers=cfg.n_layer, expand=cfg.expand, head_dim=cfg.headdim,
        num_heads=cfg.nheads, n_groups=cfg.ngroups, conv_kernel=cfg.d_conv,
        use_bias=cfg.proj_bias, use_conv_bias=cfg.conv_bias, tie_word_embeddings=True,
        layer_norm_epsilon=cfg.norm_eps, rms_norm=True, residual_in_fp32=True,
        time_step_limit=tuple(cfg.dt_limit), chunk_size=64,
        bos_token_id=0, eos_token_id=0, pad_token_id=0)
    model = transformers.Mamba2ForCausalLM(hcfg)
    sd = stio.load(os.path.join(model_dir, "model.safetensors"))
    sd = {k.replace("backbone.embedding.", "backbone.embeddings."): v.to(torch.float32)
          for k, v in sd.items()}
    sd["lm_head.weight"] = sd["backbone.embeddings.weight"]
    missing, unexpected = model.load_state_dict(sd, strict=False)
    if unexpected or any(m != "lm_head.weight" for m in missing):
        raise RuntimeError(f"transformers naming mismatch: missing {missing}, unexpected {unexpected}")
    model.tie_weights()
    model = model.to(torch.float64).eval()
    if not torch.equal(model.lm_head.weight, model.backbone.embeddings.weight):
        raise RuntimeError("lm_head is not tied to the embedding")
    return model, transformers.__version__


@torch.no_grad()
def hf_logits(model_dir, cfg, ids):
    m, ver = hf_model(model_dir, cfg.n_vocab, cfg)
    out = m(input_ids=torch.tensor([ids], dtype=torch.long), use_cache=False)
    return out.logits[0].double(), f"transformers {ver}"


@torch.no_grad()
def mock_logits(model_dir, ids):
    m = checkpoint.load_dir(model_dir, dtype=torch.float64)
    states = [(c.double(), s.double()) for c, s in m.zero_states(1)]
    rows = []
    for t in ids:
        lg, states = m.step(torch.tensor([t]), states)
        rows.append(lg[0])
    return torch.stack(rows), "MOCK: model.py float64 recurrence (no transformers here)"


@torch.no_grad()
def run(model_dir, ids, fixture_dir, repo_rel_model, mock=False, positions=None, text=None,
        log=print):
    """Compare, write the fixture, return a summary dict."""
    ours = checkpoint.load_dir(model_dir, dtype=torch.float32)
    cfg = ours.cfg
    lg_ours, _ = ours(torch.tensor([ids], dtype=torch.long))
    lg_ours = lg_ours[0].double()
    if mock:
        lg_ref, ref_name = mock_logits(model_dir, ids)
    else:
        lg_ref, ref_name = hf_logits(model_dir, cfg, ids)
    lp_ref = torch.log_softmax(lg_ref, -1)
    lp_ours = torch.log_softmax(lg_ours, -1)
    nxt = torch.tensor(ids[1:], dtype=torch.long)[:, None]
    tok_ref = lp_ref[:-1].gather(1, nxt)[:, 0]
    tok_ours = lp_ours[:-1].gather(1, nxt)[:, 0]
    d_tok = float((tok_ref - tok_ours).abs().max())
    d_full = float((lp_ref - lp_ours).abs().max())
    n = len(ids)
    if positions is None:
        positions = sorted({0, 1, n // 2, n - 1})
    os.makedirs(fixture_dir, exist_ok=True)
    stio.save({"input_ids": torch.tensor(ids, dtype=torch.int32),
               "logprobs": tok_ref.float(),
               "positions": torch.tensor(positions, dtype=torch.int32),
               "logits": lg_ref[positions].float().contiguous()},
              os.path.join(fixture_dir, "reference.safetensors"))
    sha = checkpoint.sha256_file(os.path.join(model_dir, "model.safetensors"))
    info = {"model_dir": repo_rel_model, "model_sha256": sha, "reference": ref_name,
            "torch": torch.__version__, "n_tokens": n, "positions": positions,
            "ppl_reference": math.exp(-float(tok_ref.mean())),
            "max_abs_logprob_diff_model_py": d_tok, "max_abs_full_logprob_diff_model_py": d_full,
            "tolerance_model_py": TOL_OURS, "suggested_tolerance_engine": TOL_ENGINE,
            "generator": "train/parity.py (train/posttrain_state_passing.py)", "mock": bool(mock)}
    if text is not None:
        info["text"] = text
    with open(os.path.join(fixture_dir, "reference.json"), "w") as f:
        json.dump(info, f, indent=2)
        f.write("\n")
    readme = f"""# Parity fixture for {repo_rel_model}
{"**MOCK FIXTURE from a CPU dry run: do not commit.**" if mock else ""}
Generated by `train/parity.py` (called from `train/posttrain_state_passing.py` on the device machine) with
{ref_name}, torch {torch.__version__}. The weights are not copied: they are
`{repo_rel_model}/model.safetensors`, sha256 `{sha}`.

- `reference.safetensors`: `input_ids` (I32, {n}) — our prompt followed by a continuation
  sampled from the State-Passing model; `logprobs` (F32, {n - 1}) — log p(ids[t+1] | ids[..t])
  from the reference (log-softmax over all {cfg.n_vocab} rows); `positions` (I32) and `logits`
  (F32, positions x {cfg.n_vocab}) — the reference's raw logits after reading ids[..p].
- The reference ran on the CPU in float64 (transformers' SSD path computes in float32) on
  the bf16 weights converted to float32/float64.
- model.py (float32, CPU) vs reference: max |Δ log p| of the actual next tokens
  {d_tok:.2e}, over the full distributions {d_full:.2e} (fails above {TOL_OURS:g}).
- Suggested tolerance for `recurd score` against `logprobs`: {TOL_ENGINE:g} absolute.
"""
    with open(os.path.join(fixture_dir, "README.md"), "w") as f:
        f.write(readme)
    ok = d_full <= TOL_OURS
    log(f"parity {repo_rel_model}: {ref_name}; max |dlogp| tokens {d_tok:.2e}, full {d_full:.2e}"
        f" -> {'OK' if ok else 'FAIL'} (tol {TOL_OURS:g}); ppl {info['ppl_reference']:.2f}")
    info["ok"] = ok
    return info


TOKENIZER_CASES = [
    "Hello world!", "Hello  world!", "  two leading spaces", "trailing spaces   ",
    "tabs\tand\nnew\nlines\n\n\n", "\n\n\nCHAPTER IV.\n\n", "          ten spaces",
    "caf\u00e9 (composed) and cafe\u0301 (decomposed)", "\u00c6sop's F\u00e6bles \u2014 \u201cquoted\u201d \u2018single\u2019",
    "don't I'm we'll they've she's you'd", "1234567890 3.14159 1,000,000", "...!!!???---***",
    "naïve façade coöperate résumé", "\u4e2d\u6587\u5b57 \u65e5\u672c\u8a9e \ud55c\uad6d\uc5b4",
    "emoji \U0001F600\U0001F44D\U0001F3FD", "end of one book\n<|endoftext|>\nstart of the next",
    "<|endoftext|>", "a<|endoftext|>b", "\u00a0non-breaking\u00a0spaces\u2009thin", "\r\nCRLF\r\n",
    "MR. DICKENS'S \"OUR MUTUAL FRIEND,\" VOL. I.", "",
]


def tokenizer_fixture(tok, tok_path, d, mock=False, extra_texts=()):
    """HF `tokenizers` encodings of tricky strings, for recurd's tokenizer test."""
    os.makedirs(d, exist_ok=True)
    texts = list(TOKENIZER_CASES) + list(extra_texts)
    ids = tok.encode_batch(texts)
    cases = [{"text": t, "ids": list(map(int, i)), "decoded": tok.decode(i)} for t, i in zip(texts, ids)]
    sha = checkpoint.sha256_file(tok_path)
    with open(os.path.join(d, "cases.json"), "w", encoding="utf-8") as f:
        json.dump({"tokenizer": "models/recur-sp/tokenizer.json", "tokenizer_sha256": sha,
                   "reference": tok.kind, "mock": bool(mock), "cases": cases}, f, indent=1,
                  ensure_ascii=False)
        f.write("\n")
    with open(os.path.join(d, "README.md"), "w") as f:
        f.write(f"""# Tokenizer fixture for models/recur-sp/tokenizer.json
{"**MOCK FIXTURE from a CPU dry run: do not commit.**" if mock else ""}
`cases.json`: strings we wrote (no corpus text) with the ids and decoded text that
{tok.kind} gives for them (`encode_batch`, no added special tokens beyond the text's own
`<|endoftext|>`), for the tokenizer whose sha256 is `{sha}` (the same file is in
models/recur-base). Generated by `train/parity.py` (`tokenizer_fixture`, from
`train/posttrain_state_passing.py`) on the device machine.
""")
    return len(cases)
