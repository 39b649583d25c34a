"""Memory horizons of a Mamba-2 checkpoint's heads, read from its weights (numpy only).

A head's state decays by exp(-dt * A) per token, with dt = softplus(x W + dt_bias) and
A = exp(A_log). At the bias (the input-independent part of dt) the state forgets by a factor
e every 1 / (softplus(dt_bias) * A) tokens: the head's horizon. Heads whose horizon is far
beyond the training context accumulate, on a long stream, states the model never saw in
training: the failure the unexplored-states hypothesis describes.

    /usr/bin/python3 train/horizons.py --ctx 256 models/recur-base models/recur-sp
"""
import argparse
import json
import os
import struct
import sys

import numpy as np

_DT = {"BF16": np.uint16, "F16": np.float16, "F32": np.float32}


def load(path):
    with open(path, "rb") as f:
        raw = f.read()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    out = {}
    for k, v in header.items():
        if k == "__metadata__":
            continue
        a, b = v["data_offsets"]
        x = np.frombuffer(raw[8 + n + a:8 + n + b], dtype=_DT[v["dtype"]])
        if v["dtype"] == "BF16":
            x = (x.astype(np.uint32) << 16).view(np.float32)
        out[k] = x.astype(np.float32).reshape(v["shape"])
    return out


def horizons(model_dir):
    """List (one array per layer) of the heads' horizons in tokens, sorted."""
    t = load(os.path.join(model_dir, "model.safetensors"))
    layers = sorted({int(k.split(".")[2]) for k in t if ".dt_bias" in k})
    res = []
    for i in layers:
        bias = t[f"backbone.layers.{i}.mixer.dt_bias"]
        A = np.exp(t[f"backbone.layers.{i}.mixer.A_log"])
        dt = np.logaddexp(0.0, bias)                      # softplus
        res.append(np.sort(1.0 / (dt * A)))
    return res


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ctx", type=int, required=True, help="training context, for the columns")
    ap.add_argument("models", nargs="+")
    a = ap.parse_args(argv)
    print(f"| model | heads | median horizon | max horizon | heads > ctx ({a.ctx}) | heads > 4 ctx |")
    print("|---|---|---|---|---|---|")
    for m in a.models:
        h = np.concatenate(horizons(m))
        print(f"| {os.path.basename(os.path.normpath(m))} | {h.size} | {np.median(h):.0f} | "
              f"{h.max():.0f} | {(h > a.ctx).sum()} | {(h > 4 * a.ctx).sum()} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
