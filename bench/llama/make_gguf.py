#!/usr/bin/python3
"""Convert a recurd Mamba-2 model directory into a GGUF that llama.cpp loads as "mamba2".

    make_gguf.py --gguf-py LLAMA_CPP/gguf-py MODEL_DIR OUT.gguf [--outtype f32|bf16|f16]

MODEL_DIR holds config.json (state-spaces `MambaLMHeadModel` naming or transformers
`Mamba2ForCausalLM` naming), model.safetensors (or shards listed in
model.safetensors.index.json) with F32/BF16/F16 tensors, and tokenizer.json (a byte-level
BPE tokenizer such as GPT-2's or GPT-NeoX's).

The GGUF writer is the `gguf` package of *your* llama.cpp checkout (--gguf-py); recurd
neither ships nor fetches it. Only numpy is needed besides (Debian: python3-numpy).
This is a benchmarking aid: it writes what llama.cpp's mamba2 loader expects and nothing
more (no chat template, no general.* provenance beyond the name).

Quantized formats: convert with --outtype f32 (or bf16) first, then run llama.cpp's
`llama-quantize IN.gguf OUT.gguf Q8_0`.
"""

import argparse
import json
import math
import os
import struct
import sys

import numpy as np

ST_DTYPES = {"F32": np.float32, "F16": np.float16, "BF16": np.uint16}


# ---------------------------------------------------------------------------------------
# safetensors, read directly: u64 header length, JSON header, raw little-endian data


class SafeTensors:
    def __init__(self, model_dir):
        index = os.path.join(model_dir, "model.safetensors.index.json")
        single = os.path.join(model_dir, "model.safetensors")
        if os.path.exists(single):
            files = [single]
        elif os.path.exists(index):
            with open(index, encoding="utf-8") as f:
                wm = json.load(f)["weight_map"]
            files = [os.path.join(model_dir, n) for n in sorted(set(wm.values()))]
        else:
            sys.exit(f"{model_dir}: no model.safetensors nor model.safetensors.index.json")
        self.entries = {}  # name -> (path, dtype string, shape, data start, data end)
        for path in files:
            with open(path, "rb") as f:
                (hlen,) = struct.unpack("<Q", f.read(8))
                header = json.loads(f.read(hlen))
            base = 8 + hlen
            for name, e in header.items():
                if name == "__metadata__":
                    continue
                if e["dtype"] not in ST_DTYPES:
                    sys.exit(f"{path}: {name}: dtype {e['dtype']} not supported (F32, F16, BF16)")
                if name in self.entries:
                    sys.exit(f"{path}: {name}: tensor appears twice")
                lo, hi = e["data_offsets"]
                self.entries[name] = (path, e["dtype"], tuple(e["shape"]), base + lo, base + hi)

    def names(self):
        return list(self.entries)

    def dtype(self, name):
        return self.entries[name][1]

    def raw(self, name):
        """The stored array: float32/float16, or bf16 as its uint16 bit patterns."""
        path, dt, shape, lo, hi = self.entries[name]
        npdt = np.dtype(ST_DTYPES[dt]).newbyteorder("<")
        n = int(np.prod(shape, dtype=np.int64)) if shape else 1
        if (hi - lo) != n * npdt.itemsize:
            sys.exit(f"{path}: {name}: data size {hi - lo} does not match shape {shape}")
        a = np.memmap(path, dtype=npdt, mode="r", offset=lo, shape=(n,))
        return np.array(a).reshape(shape)

    def f32(self, name):
        a = self.raw(name)
        if self.dtype(name) == "BF16":
            return (a.astype(np.uint32) << 16).view(np.float32)
        return a.astype(np.float32)


def f32_to_bf16_bits(a):
    """Round-to-nearest-even fp32 -> bf16 bit patterns (uint16); NaN stays NaN."""
    u = np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)
    rounded = ((u + (0x7FFF + ((u >> 16) & 1))) >> 16).astype(np.uint16)
    nan = np.isnan(a)
    if nan.any():
        rounded[nan] = 0x7FC0
    return rounded


# ---------------------------------------------------------------------------------------
# config.json in either naming -> one flat dict


def read_config(model_dir):
    with open(os.path.join(model_dir, "config.json"), encoding="utf-8") as f:
        # transformers writes {"__float__": "Infinity"}; Python's json writes Infinity
        cfg = json.load(f, object_hook=lambda o: float(o["__float__"]) if set(o) == {"__float__"} else o)

    def fail(msg):
        sys.exit(f"{model_dir}/config.json: {msg}")

    # (field, transformers key, state-spaces key, default); state-spaces keys
    # starting with "ssm." are read from ssm_cfg
    fields = [
        ("d_model", "hidden_size", "d_model", None),
        ("n_layer", "num_hidden_layers", "n_layer", None),
        ("d_state", "state_size", "ssm.d_state", 128),
        ("d_conv", "conv_kernel", "ssm.d_conv", 4),
        ("expand", "expand", "ssm.expand", 2),
        ("headdim", "head_dim", "ssm.headdim", 64),
        ("ngroups", "n_groups", "ssm.ngroups", 1),
        ("proj_bias", "use_bias", "ssm.bias", False),
        ("conv_bias", "use_conv_bias", "ssm.conv_bias", True),
        ("gated_rmsnorm", "rms_norm", "ssm.rmsnorm", True),
        ("norm_before_gate", None, "ssm.norm_before_gate", False),
        ("d_has_hdim", None, "ssm.D_has_hdim", False),
    ]
    hf = "hidden_size" in cfg or cfg.get("model_type") in ("mamba2", "mamba")
    ssm = {} if hf else (cfg.get("ssm_cfg") or {})
    c = {"naming": "transformers" if hf else "state-spaces"}
    for name, hf_key, ss_key, default in fields:
        key = hf_key if hf else ss_key
        src = ssm if key and key.startswith("ssm.") else cfg
        key = key[4:] if key and key.startswith("ssm.") else key
        if key is None:
            c[name] = default
        elif default is None:
            if key not in src:
                fail(f"{key} is missing")
            c[name] = src[key]
        else:
            c[name] = src.get(key, default)
    if hf:
        if cfg.get("model_type", "mamba2") != "mamba2":
            fail(f"model_type {cfg.get('model_type')!r}: only Mamba-2 converts to llama.cpp's mamba2")
        c["n_vocab"] = cfg["vocab_size"]  # transformers' embedding has exactly vocab_size rows
        c["eps"] = cfg.get("layer_norm_epsilon", 1e-5)
        c["tie"] = cfg.get("tie_word_embeddings", False)
        lim = cfg.get("time_step_limit")
        act = cfg.get("hidden_act", "silu")
        nh = cfg.get("num_heads")
        if nh is not None and nh * c["headdim"] != c["expand"] * c["d_model"]:
            fail("num_heads x head_dim != expand x hidden_size")
    else:
        if ssm.get("layer") != "Mamba2":
            fail("ssm_cfg.layer is not 'Mamba2': only Mamba-2 converts to llama.cpp's mamba2")
        if cfg.get("d_intermediate", 0) > 0:
            fail("d_intermediate > 0 (MLP blocks) is not supported")
        if cfg.get("attn_layer_idx"):
            fail("attention layers are not supported")
        if not cfg.get("rms_norm", True):
            fail("rms_norm false (LayerNorm blocks) is not supported")
        pad = cfg.get("pad_vocab_size_multiple", 8)
        c["n_vocab"] = -(-cfg["vocab_size"] // pad) * pad
        c["eps"] = cfg.get("norm_epsilon", 1e-5)
        c["tie"] = cfg.get("tie_embeddings", True)
        if ssm.get("d_ssm") not in (None, c["expand"] * c["d_model"]):
            fail("ssm_cfg.d_ssm != d_inner is not supported")
        lim = ssm.get("dt_limit")
        act = ssm.get("activation", "silu")
    c["dt_limit"] = tuple(lim) if lim else (0.0, math.inf)
    if act not in ("silu", "swish"):
        fail(f"activation {act!r} not supported")

    # what llama.cpp's mamba2 graph cannot express
    if c["proj_bias"]:
        fail("in_proj/out_proj biases: llama.cpp's mamba2 has none")
    if not c["gated_rmsnorm"]:
        fail("a Mamba-2 block without its gated RMSNorm: llama.cpp's mamba2 always applies it")
    if c["norm_before_gate"]:
        fail("norm_before_gate true: llama.cpp's mamba2 gates before the norm")
    if c["d_has_hdim"]:
        fail("D_has_hdim true: llama.cpp's mamba2 has one D per head")
    if c["dt_limit"] != (0.0, math.inf):
        fail(f"dt limit {c['dt_limit']}: llama.cpp's mamba2 does not clamp dt")
    c["d_inner"] = c["expand"] * c["d_model"]
    if c["d_inner"] % c["headdim"] or c["d_inner"] % c["ngroups"]:
        fail("d_inner must be a multiple of headdim and of ngroups")
    c["nheads"] = c["d_inner"] // c["headdim"]
    return c


# ---------------------------------------------------------------------------------------
# tokenizer.json (byte-level BPE) -> gpt2-style vocab metadata


def read_tokenizer(path, n_vocab, pre_override):
    with open(path, encoding="utf-8") as f:
        tok = json.load(f)
    model = tok.get("model") or {}
    if model.get("type") != "BPE":
        sys.exit(f"{path}: model type {model.get('type')!r}: only byte-level BPE is supported")

    pre = tok.get("pre_tokenizer")
    if pre_override:
        tokpre = pre_override
    elif pre and pre.get("type") == "ByteLevel" and pre.get("use_regex", True):
        # ByteLevel with its built-in regex is GPT-2's split: llama.cpp's "gpt-2" pre-type
        # (GPT-NeoX-20B's tokenizer is this too; llama.cpp's converter names it "mpt", whose
        # regex is the same)
        tokpre = "gpt-2"
    else:
        sys.exit(f"{path}: pre-tokenizer {json.dumps(pre)[:200]} is not plain ByteLevel; "
                 "pass --tokenizer-pre NAME (a llama.cpp pre-tokenizer type) if you know it")
    norm = tok.get("normalizer")
    if norm and norm.get("type") not in ("NFC",):
        print(f"warning: {path}: normalizer {norm.get('type')} is not applied by llama.cpp",
              file=sys.stderr)

    id_to_tok = {}
    for t, i in model["vocab"].items():
        id_to_tok[i] = t
    special = {}
    for a in tok.get("added_tokens", []):
        id_to_tok[a["id"]] = a["content"]
        special[a["id"]] = a.get("special", False)
    if max(id_to_tok) >= n_vocab:
        sys.exit(f"{path}: token id {max(id_to_tok)} does not fit the embedding's {n_vocab} rows")

    tokens, types = [], []
    for i in range(n_vocab):
        if i not in id_to_tok:
            tokens.append(f"[PAD{i}]")
            types.append(5)  # UNUSED
        else:
            tokens.append(id_to_tok[i])
            if i in special:
                types.append(3 if special[i] else 4)  # CONTROL / USER_DEFINED
            else:
                types.append(1)  # NORMAL
    if len(set(tokens)) != len(tokens):
        sys.exit(f"{path}: duplicate token strings")

    merges = []
    for m in model.get("merges", []):
        if isinstance(m, str):
            merges.append(m)
        else:
            if len(m) != 2 or " " in m[0] or " " in m[1]:
                sys.exit(f"{path}: merge {m!r} cannot be written as 'a b'")
            merges.append(f"{m[0]} {m[1]}")

    eot = None
    for i, t in id_to_tok.items():
        if t == "<|endoftext|>":
            eot = i
    if eot is None:
        specials = sorted(i for i, s in special.items() if s)
        eot = specials[0] if specials else None
    return tokens, types, merges, tokpre, eot


# ---------------------------------------------------------------------------------------


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model_dir")
    ap.add_argument("out")
    ap.add_argument("--gguf-py", required=True, help="llama.cpp/gguf-py of your llama.cpp checkout")
    ap.add_argument("--outtype", choices=["f32", "bf16", "f16"], default="f32",
                    help="type of the 2-D projection/embedding weights (norms, conv, A, D, "
                         "dt bias stay F32 as llama.cpp's own converter keeps them)")
    ap.add_argument("--tokenizer", help="tokenizer.json (default: MODEL_DIR/tokenizer.json)")
    ap.add_argument("--tokenizer-pre", help="override the pre-tokenizer type written")
    ap.add_argument("--name", help="general.name (default: the directory's name)")
    args = ap.parse_args()

    sys.path.insert(0, os.path.abspath(args.gguf_py))
    try:
        import gguf  # noqa: E402  (from the user's llama.cpp checkout)
    except ImportError as e:
        sys.exit(f"cannot import gguf from {args.gguf_py}: {e}")

    md = args.model_dir
    c = read_config(md)
    st = SafeTensors(md)
    names = set(st.names())

    emb_name = "backbone.embeddings.weight" if c["naming"] == "transformers" else "backbone.embedding.weight"
    if emb_name not in names:
        alt = "backbone.embedding.weight" if emb_name.endswith("embeddings.weight") else "backbone.embeddings.weight"
        if alt in names:
            emb_name = alt
        else:
            sys.exit(f"{md}: no {emb_name}")

    d, di, ds, ng, nh, dc = c["d_model"], c["d_inner"], c["d_state"], c["ngroups"], c["nheads"], c["d_conv"]
    conv_dim = di + 2 * ng * ds
    d_in_proj = 2 * di + 2 * ng * ds + nh
    nv = c["n_vocab"]

    expect = {emb_name: (nv, d), "backbone.norm_f.weight": (d,)}
    for i in range(c["n_layer"]):
        p = f"backbone.layers.{i}."
        expect.update({
            p + "norm.weight": (d,),
            p + "mixer.in_proj.weight": (d_in_proj, d),
            p + "mixer.conv1d.weight": (conv_dim, 1, dc),
            p + "mixer.dt_bias": (nh,),
            p + "mixer.A_log": (nh,),
            p + "mixer.D": (nh,),
            p + "mixer.norm.weight": (di,),
            p + "mixer.out_proj.weight": (d, di),
        })
        if c["conv_bias"]:
            expect[p + "mixer.conv1d.bias"] = (conv_dim,)
    has_head = "lm_head.weight" in names
    if has_head:
        expect["lm_head.weight"] = (nv, d)
    elif not c["tie"]:
        sys.exit(f"{md}: untied embeddings but no lm_head.weight")
    for n, shp in expect.items():
        if n not in names:
            sys.exit(f"{md}: missing tensor {n}")
        got = st.entries[n][2]
        if tuple(got) != shp:
            sys.exit(f"{md}: {n}: shape {list(got)}, expected {list(shp)}")
    stray = sorted(names - set(expect))
    if stray:
        sys.exit(f"{md}: tensors llama.cpp's mamba2 has no place for: {', '.join(stray[:5])}")

    outtype = args.outtype
    qt = gguf.GGMLQuantizationType
    big = {"f32": qt.F32, "bf16": qt.BF16, "f16": qt.F16}[outtype]
    ftype = {"f32": gguf.LlamaFileType.ALL_F32, "bf16": gguf.LlamaFileType.MOSTLY_BF16,
             "f16": gguf.LlamaFileType.MOSTLY_F16}[outtype]

    w = gguf.GGUFWriter(args.out, "mamba2")
    w.add_name(args.name or os.path.basename(os.path.normpath(md)))
    w.add_context_length(2 ** 20)  # no positional limit; llama.cpp's converter writes the same
    w.add_embedding_length(d)
    w.add_feed_forward_length(0)
    w.add_head_count(0)
    w.add_block_count(c["n_layer"])
    w.add_ssm_conv_kernel(dc)
    w.add_ssm_inner_size(di)
    w.add_ssm_state_size(ds)
    w.add_ssm_time_step_rank(nh)  # llama.cpp's mamba2 keeps the head count here
    w.add_ssm_group_count(ng)
    w.add_layer_norm_rms_eps(float(c["eps"]))
    w.add_file_type(int(ftype))

    tok_path = args.tokenizer or os.path.join(md, "tokenizer.json")
    if not os.path.exists(tok_path):
        sys.exit(f"{tok_path}: not found (llama.cpp needs a vocabulary)")
    tokens, types, merges, tokpre, eot = read_tokenizer(tok_path, nv, args.tokenizer_pre)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(tokpre)
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    if eot is not None:
        w.add_bos_token_id(eot)
        w.add_eos_token_id(eot)
    w.add_add_bos_token(False)  # recurd scores the text as given: no BOS prepended
    w.add_add_eos_token(False)

    def put(name, arr, kind):
        """kind 'big': the 2-D weights that take --outtype; 'f32': always F32."""
        if kind == "big" and big == qt.BF16:
            w.add_tensor(name, arr, raw_dtype=qt.BF16)
        elif kind == "big" and big == qt.F16:
            w.add_tensor(name, np.ascontiguousarray(arr, dtype=np.float16))
        else:
            w.add_tensor(name, np.ascontiguousarray(arr, dtype=np.float32))

    def big_tensor(src):
        """A 2-D weight in the output type; bf16 -> bf16 copies the bits exactly."""
        if big == qt.BF16:
            bits = st.raw(src) if st.dtype(src) == "BF16" else f32_to_bf16_bits(st.f32(src))
            return np.ascontiguousarray(bits).view(np.uint8)
        return st.f32(src)

    emb = big_tensor(emb_name)
    put("token_embd.weight", emb, "big")
    put("output_norm.weight", st.f32("backbone.norm_f.weight"), "f32")
    if has_head:
        same = c["tie"] or np.array_equal(st.raw("lm_head.weight"), st.raw(emb_name))
        if not same:
            put("output.weight", big_tensor("lm_head.weight"), "big")
    for i in range(c["n_layer"]):
        p = f"backbone.layers.{i}."
        b = f"blk.{i}."
        put(b + "attn_norm.weight", st.f32(p + "norm.weight"), "f32")
        put(b + "ssm_in.weight", big_tensor(p + "mixer.in_proj.weight"), "big")
        put(b + "ssm_conv1d.weight", st.f32(p + "mixer.conv1d.weight").reshape(conv_dim, dc), "f32")
        cb = st.f32(p + "mixer.conv1d.bias") if c["conv_bias"] else np.zeros(conv_dim, np.float32)
        put(b + "ssm_conv1d.bias", cb, "f32")
        put(b + "ssm_dt.bias", st.f32(p + "mixer.dt_bias"), "f32")
        a_log = st.f32(p + "mixer.A_log").astype(np.float64)
        put(b + "ssm_a", (-np.exp(a_log)).astype(np.float32).reshape(nh, 1), "f32")
        put(b + "ssm_d", st.f32(p + "mixer.D").reshape(nh, 1), "f32")
        put(b + "ssm_norm.weight", st.f32(p + "mixer.norm.weight").reshape(ng, di // ng), "f32")
        put(b + "ssm_out.weight", big_tensor(p + "mixer.out_proj.weight"), "big")

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    print(f"wrote {args.out}: mamba2, {c['n_layer']} layers, d_model {d}, vocab {nv}, "
          f"{outtype} ({c['naming']} naming, pre-tokenizer {tokpre})", file=sys.stderr)


if __name__ == "__main__":
    main()
