#!/usr/bin/python3
"""Write a random mamba2-130m-shaped recurd model directory (BF16) for speed comparisons.

    make_random_130m.py OUTDIR [--seed N] [--tokenizer PATH]

OUTDIR gets config.json (state-spaces naming, the shape of state-spaces/mamba2-130m:
d_model 768, 24 layers, vocab 50277 padded to 50288, d_state 128, headdim 64, ngroups 1,
tied embeddings), model.safetensors in BF16 and a copy of a GPT-NeoX tokenizer.json (so
llama.cpp gets a vocabulary; the default is the one under shared/tokenizers).

The weights are random, so the model says nothing, but both engines run the very same
numbers: convert OUTDIR with make_gguf.py for llama.cpp. Scales follow mamba_ssm's
initialisation closely enough that activations stay in a normal range: uniform weights
with fan-in scaling, A_log = log(U[1, 16]), dt_bias = inverse softplus of a log-uniform dt
in [1e-3, 0.1], D = 1, norm weights 1. Needs numpy only.
"""

import argparse
import json
import math
import os
import shutil
import struct
import sys

import numpy as np

CONFIG = {
    "d_model": 768,
    "d_intermediate": 0,
    "n_layer": 24,
    "vocab_size": 50277,
    "ssm_cfg": {"layer": "Mamba2", "d_state": 128, "d_conv": 4, "expand": 2,
                "headdim": 64, "ngroups": 1},
    "attn_layer_idx": [],
    "attn_cfg": {},
    "rms_norm": True,
    "residual_in_fp32": True,
    "fused_add_norm": True,
    "pad_vocab_size_multiple": 16,
    "tie_embeddings": True,
}

REPO = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
TOKENIZER_CANDIDATES = [  # shared/ sits beside the checkout (or inside it)
    os.path.normpath(os.path.join(REPO, "..", "shared", "tokenizers", "gpt-neox-20b", "tokenizer.json")),
    os.path.normpath(os.path.join(REPO, "shared", "tokenizers", "gpt-neox-20b", "tokenizer.json")),
]


def bf16_bits(a):
    """fp32 -> bf16 bit patterns, round to nearest even."""
    u = np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)
    return ((u + (0x7FFF + ((u >> 16) & 1))) >> 16).astype("<u2")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("outdir")
    ap.add_argument("--seed", type=int, default=130)
    ap.add_argument("--tokenizer", default=None,
                    help="tokenizer.json to copy (default: shared/tokenizers/gpt-neox-20b/"
                         "tokenizer.json beside or inside the checkout)")
    args = ap.parse_args()

    tok = args.tokenizer
    if tok is None:
        for cand in TOKENIZER_CANDIDATES:
            if os.path.exists(cand):
                tok = cand
                break
    if tok is None or not os.path.exists(tok):
        sys.exit("no GPT-NeoX tokenizer.json found: pass --tokenizer PATH")

    c = CONFIG
    s = c["ssm_cfg"]
    d, L = c["d_model"], c["n_layer"]
    pad = c["pad_vocab_size_multiple"]
    nv = -(-c["vocab_size"] // pad) * pad
    di = s["expand"] * d
    ds, ng, hd, dc = s["d_state"], s["ngroups"], s["headdim"], s["d_conv"]
    nh = di // hd
    conv_dim = di + 2 * ng * ds
    d_in_proj = 2 * di + 2 * ng * ds + nh

    rng = np.random.default_rng(args.seed)

    def uni(shape, bound):
        return rng.uniform(-bound, bound, size=shape).astype(np.float32)

    tensors = {}  # name -> fp32 array, in file order
    tensors["backbone.embedding.weight"] = uni((nv, d), 0.02 * math.sqrt(3.0))  # std 0.02
    for i in range(L):
        p = f"backbone.layers.{i}."
        dt = np.exp(rng.uniform(math.log(1e-3), math.log(0.1), size=nh))
        dt_bias = dt + np.log(-np.expm1(-dt))  # inverse softplus
        tensors[p + "norm.weight"] = np.ones(d, np.float32)
        tensors[p + "mixer.in_proj.weight"] = uni((d_in_proj, d), 1.0 / math.sqrt(d))
        tensors[p + "mixer.conv1d.weight"] = uni((conv_dim, 1, dc), 1.0 / math.sqrt(dc))
        tensors[p + "mixer.conv1d.bias"] = uni((conv_dim,), 1.0 / math.sqrt(dc))
        tensors[p + "mixer.dt_bias"] = dt_bias.astype(np.float32)
        tensors[p + "mixer.A_log"] = np.log(rng.uniform(1.0, 16.0, size=nh)).astype(np.float32)
        tensors[p + "mixer.D"] = np.ones(nh, np.float32)
        tensors[p + "mixer.norm.weight"] = np.ones(di, np.float32)
        # out_proj scaled by 1/sqrt(n_layer) as mamba_ssm's rescale_prenorm_residual does
        tensors[p + "mixer.out_proj.weight"] = uni((d, di), 1.0 / math.sqrt(di) / math.sqrt(L))
    tensors["backbone.norm_f.weight"] = np.ones(d, np.float32)

    os.makedirs(args.outdir, exist_ok=True)
    header, off = {}, 0
    blobs = []
    for name, a in tensors.items():
        b = bf16_bits(a).tobytes()
        header[name] = {"dtype": "BF16", "shape": list(a.shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    header["__metadata__"] = {"format": "pt", "note": f"random mamba2-130m shape, seed {args.seed}"}
    hj = json.dumps(header, separators=(",", ":")).encode()
    hj += b" " * (-len(hj) % 8)
    tmp = os.path.join(args.outdir, "model.safetensors.tmp")
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(hj)))
        f.write(hj)
        for b in blobs:
            f.write(b)
    os.replace(tmp, os.path.join(args.outdir, "model.safetensors"))
    with open(os.path.join(args.outdir, "config.json"), "w", encoding="utf-8") as f:
        json.dump(c, f, indent=2)
        f.write("\n")
    shutil.copyfile(tok, os.path.join(args.outdir, "tokenizer.json"))
    n = sum(a.size for a in tensors.values())
    print(f"wrote {args.outdir}: {n:,} parameters, BF16, vocab {nv} rows, seed {args.seed}",
          file=sys.stderr)


if __name__ == "__main__":
    main()
