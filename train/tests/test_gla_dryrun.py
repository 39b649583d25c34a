"""Miniature end-to-end runs of train/device_gla.sh (train/dryrun_gla.sh) on the CPU: with
the mock tokenizer reading the shipped tokenizer.json, through the HF code path against
tests/stubs, and killed mid-pre-training (its last periodic pack must hold a model)."""
import json
import os
import subprocess
import sys

import pytest
import torch

from conftest import HERE, REPO, TRAIN
import gla
import stio

SHIPPED_TOK = os.path.join(REPO, "models", "recur-sp", "tokenizer.json")
pytestmark = pytest.mark.skipif(not os.path.exists(SHIPPED_TOK), reason="models/recur-sp absent")


def run_dry(tmp_path, env_extra, timeout=240, ok=True):
    env = dict(os.environ, PYTHON=sys.executable, DRY_PRE="14", DRY_DEADLINE="40")
    env.pop("RECUR_T0", None)
    env.update(env_extra)
    r = subprocess.run(["bash", os.path.join(TRAIN, "dryrun_gla.sh"), str(tmp_path)], env=env,
                       capture_output=True, text=True, timeout=timeout)
    if ok:
        assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    return r


def check_model_dir(d, ctx=64):
    c = json.load(open(os.path.join(d, "config.json")))
    assert c["model_type"] == "gla" and c["architectures"] == ["GLAForCausalLM"]
    assert c["training_context"] == ctx and c["vocab_size"] == 8192
    assert c["hidden_size"] == 32 and c["num_hidden_layers"] == 2 and c["use_short_conv"] is True
    sd = stio.load(os.path.join(d, "model.safetensors"))
    assert "lm_head.weight" not in sd and "model.embeddings.weight" in sd
    assert "model.layers.1.attn.g_norm_swish_gate.weight" in sd
    assert all(v.dtype == torch.bfloat16 for v in sd.values())
    assert open(os.path.join(d, "tokenizer.json"), "rb").read() == open(SHIPPED_TOK, "rb").read()
    m = gla.load_fla(d)
    lg, _ = m(torch.randint(0, 8192, (1, 20)))
    assert torch.isfinite(lg).all()
    return sd


def check_outputs(root):
    out = os.path.join(root, "out")
    files = sorted(os.listdir(out))
    assert len(files) <= 8 and "gla.manifest.json" in files and "summary.json" in files, files
    repo = os.path.join(root, "repo")
    assert sorted(os.listdir(repo)) == ["models", "train"]
    sp = check_model_dir(os.path.join(repo, "models", "recur-gla-sp"))
    base = check_model_dir(os.path.join(repo, "models", "recur-gla-base"))
    assert any(not torch.equal(sp[k], base[k]) for k in sp)       # post-training moved weights
    card = open(os.path.join(repo, "models", "recur-gla-sp", "README.md")).read()
    for s in ("State Passing", "Licence", "recurd-eval:begin", "Continuation 3", "| base ppl | sp ppl",
              "x 64 tokens", "GLAForCausalLM"):
        assert s in card, s
    summ = json.load(open(os.path.join(out, "summary.json")))
    assert summ["status"] == "done" and not summ["warnings"], summ
    assert set(summ["variants"]) == {"sp", "zero"} and summ["variants"]["sp"]["steps"] == 20
    res = os.path.join(repo, "train", "results", "gla")
    long = json.load(open(os.path.join(res, "longeval.json")))
    assert set(long) == {"base", "sp", "zero"}
    assert long["base"][-1]["end"] > 64 and long["base"][-1]["books"] == 3
    log = [json.loads(ln) for ln in open(os.path.join(res, "train_log.jsonl"))]
    assert {r["tag"] for r in log} == {"pretrain", "post-sp", "post-zero"}
    # State Passing really started from carried states: non-zero state std from step 2 on
    assert all(r["state_std"] > 0 for r in log if r["tag"] == "post-sp")


def test_gla_dry_run_mock(tmp_path):
    run_dry(tmp_path, {})
    check_outputs(str(tmp_path))


def test_gla_dry_run_hf_paths_with_stubs(tmp_path):
    r = run_dry(tmp_path, {"DRY_MOCK": "", "PYTHONPATH": os.path.join(HERE, "stubs")})
    assert "tokenizers 0.0-stub" in r.stdout
    check_outputs(str(tmp_path))


def test_gla_dry_run_killed_mid_pretraining(tmp_path):
    """SIGKILL during pre-training: $OUT still holds a loadable base from a periodic pack."""
    root = str(tmp_path)
    r = run_dry(tmp_path, {"DRY_KILL": "16", "DRY_PRE": "60", "DRY_DEADLINE": "90"})
    out = os.path.join(root, "out")
    assert "status started" not in r.stdout and "==== gla summary" not in r.stdout
    check_model_dir(os.path.join(root, "repo", "models", "recur-gla-base"))
    summ = json.load(open(os.path.join(out, "summary.json")))
    assert summ["status"] == "started"
