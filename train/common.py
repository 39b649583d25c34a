"""Shared plumbing of the device calls: clock, log, versions, staging."""
import json
import os
import platform
import sys
import time

import torch

T0 = float(os.environ.get("RECUR_T0", time.time()))  # the device script's start, if it set one


def since_start():
    return time.time() - T0


class Log:
    """print() that flushes and keeps a copy in a file."""

    def __init__(self, path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        self.f = open(path, "a", encoding="utf-8")

    def __call__(self, *a):
        s = " ".join(str(x) for x in a)
        line = f"[{since_start():6.1f}s] {s}"
        print(line, flush=True)
        self.f.write(line + "\n")
        self.f.flush()


def versions():
    v = {"python": platform.python_version(), "torch": torch.__version__}
    from importlib import metadata
    for mod in ("numpy", "tokenizers", "transformers", "safetensors"):
        try:  # metadata, not import: importing transformers costs seconds of device time
            v[mod] = metadata.version(mod)
        except Exception:  # noqa: BLE001 - absent locally; recorded as such
            v[mod] = None
    if torch.cuda.is_available():
        v["gpu"] = torch.cuda.get_device_name(0)
    return v


def write_json(path, obj):
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path + ".tmp", "w") as f:
        json.dump(obj, f, indent=2)
        f.write("\n")
    os.replace(path + ".tmp", path)


def read_json(path):
    with open(path) as f:
        return json.load(f)


def need(path, what):
    if not os.path.exists(path):
        sys.exit(f"FATAL: missing {what}: {path}")
    return path


def seed_all(seed):
    import random
    import numpy as np
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
