"""Checkpoint directories <-> Mamba2LM.

state-spaces layout (what recurd ships):  config.json (MambaLMHeadModel) + model.safetensors,
  keys backbone.embedding.weight, backbone.layers.N.{norm,mixer.*}, backbone.norm_f.weight,
  no lm_head.weight when tied.
transformers layout (read only, for tests): config.json (Mamba2ForCausalLM) + model.safetensors
  or shards listed in model.safetensors.index.json; backbone.embeddings.weight.
"""
import hashlib
import json
import os

import torch

import stio
from model import Mamba2LM, ModelConfig

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for blk in iter(lambda: f.read(1 << 20), b""):
            h.update(blk)
    return h.hexdigest()


def state_spaces_tensors(model, dtype=torch.bfloat16):
    """The model's weights under state-spaces names, cast to dtype (no lm_head when tied)."""
    out = {}
    for k, v in model.state_dict().items():
        if k == "lm_head.weight" and model.cfg.tie_embeddings:
            continue
        out[k] = v.detach().to("cpu").to(dtype).contiguous()
    return out


def save_state_spaces(model, d, dtype=torch.bfloat16, metadata=None, training_context=None):
    """Write config.json + model.safetensors into directory d. Returns the weights' sha256.
    training_context (the pre-training window, tokens) goes into config.json as an extra
    key that loaders ignore; recurd's evaluation scripts read it (issue 17)."""
    os.makedirs(d, exist_ok=True)
    meta = {"format": "pt"}
    meta.update(metadata or {})
    path = os.path.join(d, "model.safetensors")
    stio.save(state_spaces_tensors(model, dtype), path, metadata=meta)
    with open(os.path.join(d, "config.json"), "w") as f:
        c = model.cfg.to_state_spaces()
        if training_context is not None:
            c["training_context"] = int(training_context)
        json.dump(c, f, indent=2)
        f.write("\n")
    return sha256_file(path)


def _read_tensors(d):
    idx = os.path.join(d, "model.safetensors.index.json")
    if os.path.exists(idx):
        with open(idx) as f:
            files = sorted(set(json.load(f)["weight_map"].values()))
        sd = {}
        for fn in files:
            sd.update(stio.load(os.path.join(d, fn)))
        return sd
    return stio.load(os.path.join(d, "model.safetensors"))


def load_dir(d, dtype=torch.float32, chunk_size=None):
    """Load either layout into a Mamba2LM with weights in `dtype` (eval mode)."""
    with open(os.path.join(d, "config.json")) as f:
        c = json.load(f)
    over = {"chunk_size": chunk_size} if chunk_size else {}
    sd = _read_tensors(d)
    if "hidden_size" in c:  # transformers naming
        cfg = ModelConfig.from_hf(c, **over)
        sd = {k.replace("backbone.embeddings.", "backbone.embedding."): v for k, v in sd.items()}
    else:
        cfg = ModelConfig.from_state_spaces(c, **over)
    if cfg.tie_embeddings:
        sd.pop("lm_head.weight", None)
    return load_checked(Mamba2LM(cfg), sd, d, dtype)


def load_checked(model, sd, d, dtype):
    """Load state dict sd (read from dir d) into model after checking that the
    names and shapes are exactly the model's; the model in `dtype`, eval mode."""
    want, got = set(model.state_dict()), set(sd)
    if want != got:
        raise ValueError(f"{d}: tensor names differ: missing {sorted(want - got)}, "
                         f"unexpected {sorted(got - want)}")
    for k, v in model.state_dict().items():
        if tuple(v.shape) != tuple(sd[k].shape):
            raise ValueError(f"{d}: {k} has shape {tuple(sd[k].shape)}, expected {tuple(v.shape)}")
    model.load_state_dict({k: v.to(torch.float32) for k, v in sd.items()})
    return model.to(dtype).eval()
