#!/usr/bin/env python3
"""Write a tiny random-weight Mamba-2 model directory for the server tests.

config.json (state-spaces MambaLMHeadModel form) + model.safetensors (fp32),
no tokenizer.json: the server then uses its byte-level codec (id = byte), so
the vocabulary is 256 ids (padded to 256 rows). Weights are drawn from
numpy's seeded generator: the same seed writes the same bytes; another seed
writes a model with the same shapes and a different fingerprint (the
snapshot-from-another-model tests use that).

--arch gla writes a GLA model instead (fla's GLAForCausalLM config and
tensor names: 4 heads, 2 kv heads, short conv, untied); --llama-tokenizer
adds a small Llama-style tokenizer.json (Metaspace, byte fallback, "<s> $A")
and sizes the vocabulary to it.

Usage: make_model.py OUT_DIR [--seed N] [--d-model 64] [--n-layer 2] [--arch gla]
                     [--llama-tokenizer]
"""
import argparse
import json
import os
import struct

import numpy as np


def tensors(rng, d_model, n_layer, vocab, d_state, headdim, d_conv, expand, ngroups):
    di = expand * d_model
    nheads = di // headdim
    conv_dim = di + 2 * ngroups * d_state
    rows = (vocab + 15) // 16 * 16

    def normal(shape, std):
        return (rng.standard_normal(shape) * std).astype(np.float32)

    # logits = norm_f(h) . embedding: std 0.2 keeps them O(1) at d_model 64
    out = [("backbone.embedding.weight", normal((rows, d_model), 0.2))]
    for i in range(n_layer):
        p = f"backbone.layers.{i}."
        out += [
            (p + "norm.weight", np.ones(d_model, np.float32)),
            (p + "mixer.in_proj.weight",
             normal((2 * di + 2 * ngroups * d_state + nheads, d_model), d_model ** -0.5)),
            (p + "mixer.conv1d.weight", normal((conv_dim, 1, d_conv), 0.3)),
            (p + "mixer.conv1d.bias", normal((conv_dim,), 0.05)),
            # softplus(dt_bias) between ~0.001 and ~0.1, like mamba_ssm's init
            (p + "mixer.dt_bias",
             np.log(np.expm1(np.exp(rng.uniform(np.log(1e-3), np.log(1e-1), nheads))))
             .astype(np.float32)),
            (p + "mixer.A_log", np.log(rng.uniform(1, 16, nheads)).astype(np.float32)),
            (p + "mixer.D", np.ones(nheads, np.float32)),
            (p + "mixer.norm.weight", np.ones(di, np.float32)),
            (p + "mixer.out_proj.weight", normal((d_model, di), di ** -0.5 / n_layer)),
        ]
    out.append(("backbone.norm_f.weight", np.ones(d_model, np.float32)))
    return out


def gla_tensors(rng, d, n_layer, vocab):
    """fla GLA: heads 4, kv heads 2, expand_k 0.5, expand_v 1, short conv 4,
    intermediate 128, untied."""
    kd, vd, g, ff, r, k = d // 2, d, 2, 128, 16, 4

    def normal(shape, std):
        return (rng.standard_normal(shape) * std).astype(np.float32)

    out = [("model.embeddings.weight", normal((vocab, d), 1.0))]
    for i in range(n_layer):
        p = f"model.layers.{i}."
        out += [
            (p + "attn_norm.weight", np.ones(d, np.float32)),
            (p + "attn.q_proj.weight", normal((kd, d), d ** -0.5)),
            (p + "attn.k_proj.weight", normal((kd // g, d), d ** -0.5)),
            (p + "attn.v_proj.weight", normal((vd // g, d), d ** -0.5)),
            (p + "attn.g_proj.weight", normal((vd, d), d ** -0.5)),
            (p + "attn.q_conv1d.weight", normal((kd, 1, k), 0.5)),
            (p + "attn.k_conv1d.weight", normal((kd // g, 1, k), 0.5)),
            (p + "attn.v_conv1d.weight", normal((vd // g, 1, k), 0.5)),
            (p + "attn.gk_proj.0.weight", normal((r, d), d ** -0.5)),
            (p + "attn.gk_proj.1.weight", normal((kd // g, r), r ** -0.5)),
            (p + "attn.gk_proj.1.bias", rng.uniform(0, 4, kd // g).astype(np.float32)),
            (p + "attn.o_proj.weight", normal((d, vd), vd ** -0.5 / n_layer)),
            (p + "attn.g_norm_swish_gate.weight", np.ones(vd // 4, np.float32)),
            (p + "mlp_norm.weight", np.ones(d, np.float32)),
            (p + "mlp.gate_proj.weight", normal((ff, d), d ** -0.5)),
            (p + "mlp.up_proj.weight", normal((ff, d), d ** -0.5)),
            (p + "mlp.down_proj.weight", normal((d, ff), ff ** -0.5 / n_layer)),
        ]
    out += [("model.norm.weight", np.ones(d, np.float32)),
            ("lm_head.weight", normal((vocab, d), 0.2))]
    return out


def gla_config(d, n_layer, vocab):
    return {"model_type": "gla", "architectures": ["GLAForCausalLM"], "hidden_size": d,
            "num_hidden_layers": n_layer, "num_heads": 4, "num_kv_heads": 2, "expand_k": 0.5,
            "expand_v": 1, "intermediate_size": 128, "use_short_conv": True, "conv_size": 4,
            "use_output_gate": True, "hidden_act": "swish", "norm_eps": 1e-6,
            "tie_word_embeddings": False, "vocab_size": vocab, "fuse_norm": True,
            "feature_map": None, "attn": None, "use_gk": True, "use_gv": False}


LLAMA_WORDS = ["the", "and", "of", "to", "in", "is", "that", "it", "for", "this", "program",
               "free", "software", "you", "can", "hello", "world"]


def llama_tokenizer():
    """A small Llama/Mistral-style tokenizer.json: <unk> <s> </s>, the 256
    byte tokens, the letters, and merges that build "▁word" for a few words."""
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for b in range(256):
        vocab[f"<0x{b:02X}>"] = len(vocab)
    for ch in "▁abcdefghijklmnopqrstuvwxyz.,":
        vocab.setdefault(ch, len(vocab))
    merges = []
    for w in LLAMA_WORDS:
        cur = "▁"
        for ch in w:
            nxt = cur + ch
            if nxt not in vocab:
                vocab[nxt] = len(vocab)
                merges.append(f"{cur} {ch}")
            cur = nxt

    def added(i, c):
        return {"id": i, "content": c, "single_word": False, "lstrip": False, "rstrip": False,
                "normalized": False, "special": True}

    meta = {"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": "first", "split": False}
    tok = {
        "version": "1.0", "truncation": None, "padding": None,
        "added_tokens": [added(0, "<unk>"), added(1, "<s>"), added(2, "</s>")],
        "normalizer": None, "pre_tokenizer": meta,
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}},
                       {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": "<s>", "type_id": 0}},
                     {"Sequence": {"id": "A", "type_id": 0}},
                     {"SpecialToken": {"id": "<s>", "type_id": 1}},
                     {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]}}},
        "decoder": dict(meta),
        "model": {"type": "BPE", "dropout": None, "unk_token": "<unk>",
                  "continuing_subword_prefix": None, "end_of_word_suffix": None,
                  "fuse_unk": True, "byte_fallback": True, "ignore_merges": False,
                  "vocab": vocab, "merges": merges},
    }
    return tok, len(vocab)


def write_safetensors(path, named):
    header, off, blobs = {}, 0, []
    for name, arr in named:
        data = np.ascontiguousarray(arr, dtype="<f4").tobytes()
        header[name] = {"dtype": "F32", "shape": list(arr.shape),
                        "data_offsets": [off, off + len(data)]}
        off += len(data)
        blobs.append(data)
    hj = json.dumps(header, separators=(",", ":")).encode()
    hj += b" " * ((8 - len(hj) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(hj)))
        f.write(hj)
        for b in blobs:
            f.write(b)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--d-model", type=int, default=64)
    ap.add_argument("--n-layer", type=int, default=2)
    ap.add_argument("--d-state", type=int, default=16)
    ap.add_argument("--headdim", type=int, default=16)
    ap.add_argument("--arch", choices=["mamba2", "gla"], default="mamba2")
    ap.add_argument("--llama-tokenizer", action="store_true")
    a = ap.parse_args()
    if a.arch == "gla" or a.llama_tokenizer:
        rng = np.random.default_rng(a.seed)
        os.makedirs(a.out, exist_ok=True)
        vocab = 256
        if a.llama_tokenizer:
            tok, vocab = llama_tokenizer()
            with open(os.path.join(a.out, "tokenizer.json"), "w", encoding="utf-8") as f:
                json.dump(tok, f, ensure_ascii=False)
        if a.arch != "gla":
            raise SystemExit("--llama-tokenizer is only written with --arch gla")
        write_safetensors(os.path.join(a.out, "model.safetensors"),
                          gla_tensors(rng, a.d_model, a.n_layer, vocab))
        with open(os.path.join(a.out, "config.json"), "w") as f:
            json.dump(gla_config(a.d_model, a.n_layer, vocab), f, indent=2)
        return
    vocab, d_conv, expand, ngroups = 256, 4, 2, 1
    rng = np.random.default_rng(a.seed)
    os.makedirs(a.out, exist_ok=True)
    named = tensors(rng, a.d_model, a.n_layer, vocab, a.d_state, a.headdim, d_conv, expand,
                    ngroups)
    write_safetensors(os.path.join(a.out, "model.safetensors"), named)
    cfg = {
        "d_model": a.d_model, "d_intermediate": 0, "n_layer": a.n_layer, "vocab_size": vocab,
        "ssm_cfg": {"layer": "Mamba2", "d_state": a.d_state, "d_conv": d_conv,
                    "expand": expand, "headdim": a.headdim, "ngroups": ngroups},
        "attn_layer_idx": [], "attn_cfg": {}, "rms_norm": True, "residual_in_fp32": True,
        "fused_add_norm": True, "pad_vocab_size_multiple": 16, "tie_embeddings": True,
    }
    with open(os.path.join(a.out, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)


if __name__ == "__main__":
    main()
