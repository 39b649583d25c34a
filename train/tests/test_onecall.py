"""Miniature runs of the two device scripts added for the length-generalisation ablations:
train/device_sweep.sh (several pre-trainings side by side, a given tokenizer, their own dt
initialisation) and train/device_onecall.sh (pre-training and post-training in one call)."""
import json
import os
import shutil
import subprocess
import sys

import torch

from conftest import TRAIN
import checkpoint
import dry_data

TINY = ("--d-model 64 --n-layer 2 --d-state 16 --headdim 16 --chunk 16 --mock-hf --n-val 3 "
        "--long-eval-min-left 0 --log-every 25 --eval-every 100 --ckpt-every 5 "
        "--val-windows 16 --warmup 20 --long-eval-tokens 2048 --tok-bytes 1e5 --vocab 512")


def checkout(tmp_path):
    root = str(tmp_path)
    os.makedirs(os.path.join(root, "train"))
    for f in os.listdir(TRAIN):
        if f.endswith((".py", ".sh")):
            shutil.copy(os.path.join(TRAIN, f), os.path.join(root, "train"))
    dry_data.make(root)
    return root


def sh(root, script, args, env_extra, timeout=240):
    env = dict(os.environ, PYTHON=sys.executable, **env_extra)
    env.pop("RECUR_T0", None)
    r = subprocess.run(["bash", os.path.join("train", script)] + args, cwd=root, env=env,
                       capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    return r.stdout


def unpack(root, src, name, dst):
    subprocess.run([sys.executable, "train/pack.py", "unpack", "--from", src, "--name", name,
                    "--to", dst], cwd=root, check=True, capture_output=True)


def learned_tokenizer(root):
    """A mock tokenizer learned by an ordinary call 1, as the shipped one would be."""
    sh(root, "device_pretrain_base.sh", TINY.split() + ["--ctx", "32", "--batch", "8", "--deadline", "12",
                                               "--reserve", "4"], {"OUT": os.path.join(root, "o0")})
    unpack(root, "o0", "call1", ".data/c0")
    shutil.copy(os.path.join(root, ".data/c0/tokenizer.json"), os.path.join(root, ".data/tokenizer.json"))


def dt_A(model):
    """Per-layer decay rates dt*A at the bias (input-independent part)."""
    return [torch.nn.functional.softplus(l.mixer.dt_bias) * torch.exp(l.mixer.A_log)
            for l in model.backbone.layers]


def test_sweep_runs_side_by_side_with_given_tokenizer_and_dt_init(tmp_path):
    root = checkout(tmp_path)
    learned_tokenizer(root)
    out = os.path.join(root, "out")
    sh(root, "device_sweep.sh", ["a --ctx 16 --batch 16", "b --ctx 16 --batch 16 --dt-min 1e-4 "
                                 "--dt-max 1e-3 --seed 7"],
       {"OUT": out, "SWEEP_ARGS": TINY + " --tokenizer .data/tokenizer.json --deadline 20 --reserve 5"})
    files = sorted(os.path.relpath(os.path.join(d, f), out) for d, _, fs in os.walk(out) for f in fs)
    assert len(files) <= 8, files                     # the device tool returns at most 8 files
    log = open(os.path.join(out, "sweep.log")).read()
    assert log.count("==== call 1 summary ====") == 2 and "status      trained" in log
    metas = {}
    for n in ("a", "b"):
        unpack(root, os.path.join("out", n), "call1", f".data/{n}")
        d = os.path.join(root, ".data", n)
        assert open(os.path.join(d, "tokenizer.json"), "rb").read() == \
            open(os.path.join(root, ".data/tokenizer.json"), "rb").read()
        metas[n] = json.load(open(os.path.join(d, "meta.json")))
        assert metas[n]["args"]["ctx"] == 16
    assert metas["a"]["args"]["dt_min"] == 1e-3 and metas["b"]["args"]["dt_min"] == 1e-4
    # run b started with every head's dt below 1e-3: its decay rates stay far below a's
    ra = torch.cat(dt_A(checkpoint.load_dir(os.path.join(root, ".data/a/base"))))
    rb = torch.cat(dt_A(checkpoint.load_dir(os.path.join(root, ".data/b/base"))))
    assert rb.median() < ra.median() / 3, (ra, rb)


def test_onecall_pretrains_then_post_trains(tmp_path):
    root = checkout(tmp_path)
    learned_tokenizer(root)
    out = os.path.join(root, "out")
    sh(root, "device_onecall.sh",
       ["--mock-hf", "--post-steps", "20", "--post-warmup", "5", "--deadline", "55", "--reserve",
        "12", "--log-every", "10", "--long-eval-tokens", "2048", "--parity-tokens", "64",
        "--effrem-T", "16,64", "--effrem-points", "4", "--effrem-books", "2", "--variants", "sp"],
       {"OUT": out, "PRE_DEADLINE": "18",
        "PRE_ARGS": TINY + " --ctx 16 --batch 16 --dt-min 1e-4 --dt-max 1e-2 --reserve 4"})
    assert os.path.exists(os.path.join(out, "call1.log"))
    summ = json.load(open(os.path.join(out, "summary.json")))
    assert set(summ["variants"]) == {"sp"} and all(p["ok"] for p in summ["parity"].values())
    unpack(root, "out", "call2", "repo")
    card = open(os.path.join(root, "repo/models/recur-base/README.md")).read()
    assert "log-uniform in [0.0001, 0.01]" in card and "x 16 tokens" in card
    for name in ("recur-sp", "recur-base"):
        m = checkpoint.load_dir(os.path.join(root, "repo/models", name))
        assert m.cfg.d_model == 64
    assert open(os.path.join(root, "repo/models/recur-sp/tokenizer.json"), "rb").read() == \
        open(os.path.join(root, ".data/tokenizer.json"), "rb").read()
