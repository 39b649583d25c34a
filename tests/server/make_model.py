#!/usr/bin/env python3
"""Write a tiny random-weight Mamba-2 model directory for the server tests.

config.json (state-spaces MambaLMHeadModel form) + model.safetensors (fp32),
no tokenizer.json: the server then uses its byte-level codec (id = byte), so
the vocabulary is 256 ids (padded to 256 rows). Weights are drawn from
numpy's seeded generator: the same seed writes the same bytes; another seed
writes a model with the same shapes and a different fingerprint (the
snapshot-from-another-model tests use that).

Usage: make_model.py OUT_DIR [--seed N] [--d-model 64] [--n-layer 2]
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
    a = ap.parse_args()
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
