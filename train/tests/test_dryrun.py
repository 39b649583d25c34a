"""Miniature end-to-end dry run of both device calls (train/dryrun.sh) on the CPU:
once with the mock tokenizer/reference (what a machine without HF libraries can do), once
through the device-only HF code paths against the stubs in tests/stubs."""
import json
import os
import subprocess
import sys

import pytest
import torch

from conftest import HERE, TRAIN
import checkpoint
import stio


def run_dry(tmp_path, env_extra):
    env = dict(os.environ, PYTHON=sys.executable, DRY_DEADLINE1="18", DRY_DEADLINE2="45")
    env.update(env_extra)
    r = subprocess.run(["bash", os.path.join(TRAIN, "dryrun.sh"), str(tmp_path)], env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    return r.stdout


def check_outputs(root, mock):
    repo = os.path.join(root, "repo")
    for name in ("recur-sp", "recur-base"):
        d = os.path.join(repo, "models", name)
        cfg = json.load(open(os.path.join(d, "config.json")))
        assert cfg["ssm_cfg"]["layer"] == "Mamba2" and cfg["tie_embeddings"] is True
        sd = stio.load(os.path.join(d, "model.safetensors"))
        assert "lm_head.weight" not in sd
        assert all(v.dtype == torch.bfloat16 for v in sd.values())
        assert sd["backbone.embedding.weight"].shape[0] % 16 == 0
        m = checkpoint.load_dir(d)
        assert m.cfg.d_model == 64 and m.cfg.n_layer == 2
        card = open(os.path.join(d, "README.md")).read()
        assert "Licence" in card and "recurd-eval:begin" in card
        fx = os.path.join(repo, "tests", "fixtures", "parity", name)
        ref = json.load(open(os.path.join(fx, "reference.json")))
        assert ref["mock"] is mock and ref["model_dir"] == f"models/{name}"
        assert ref["max_abs_full_logprob_diff_model_py"] < 1e-3
        t = stio.load(os.path.join(fx, "reference.safetensors"))
        assert t["logprobs"].shape[0] == t["input_ids"].shape[0] - 1 == 95
    tf = json.load(open(os.path.join(repo, "tests", "fixtures", "tokenizer", "recur-sp", "cases.json")))
    assert tf["mock"] is mock and len(tf["cases"]) > 20
    assert all(c["decoded"] == __import__("unicodedata").normalize("NFC", c["text"])
               for c in tf["cases"] if "<|endoftext|>" not in c["text"])
    assert "Continuation 3" in open(os.path.join(repo, "models", "recur-sp", "README.md")).read()
    # the two shipped models differ (post-training changed the weights)
    a = stio.load(os.path.join(repo, "models", "recur-sp", "model.safetensors"))
    b = stio.load(os.path.join(repo, "models", "recur-base", "model.safetensors"))
    assert any(not torch.equal(a[k], b[k]) for k in a)
    summ = json.load(open(os.path.join(root, "out2", "summary.json")))
    assert set(summ["variants"]) == {"sp", "fitted", "tbtt", "zero"}, summ
    assert not summ["warnings"], summ["warnings"]
    long = json.load(open(os.path.join(repo, "train", "results", "longeval.json")))
    assert set(long) == {"base", "sp", "fitted", "tbtt", "zero"}
    eff = json.load(open(os.path.join(repo, "train", "results", "effrem.json")))
    assert set(eff) == {"base", "sp"} and eff["sp"]["256"][0] == [0, 0.0]


def test_dry_run_mock(tmp_path):
    run_dry(tmp_path, {})
    check_outputs(str(tmp_path), mock=True)


def test_dry_run_hf_paths_with_stubs(tmp_path):
    stubs = os.path.join(HERE, "stubs")
    out = run_dry(tmp_path, {"DRY_MOCK": "", "PYTHONPATH": stubs})
    assert "tokenizers 0.0-stub" in out and "transformers 0.0-stub" in out
    check_outputs(str(tmp_path), mock=False)


def test_dry_run_call1_killed(tmp_path):
    """Call 1 SIGKILLed mid-training: its last periodic checkpoint is enough for call 2."""
    out = run_dry(tmp_path, {"DRY_KILL1": "12", "DRY_DEADLINE1": "60"})
    summ1 = os.path.join(str(tmp_path), "out1", "summary.json")
    assert not os.path.exists(summ1)          # it really died before finishing
    meta = json.load(open(os.path.join(str(tmp_path), ".data", "call1", "meta.json")))
    assert meta["pretrain"]["stop_reason"] == "running" and meta["pretrain"]["steps"] > 0
    check_outputs(str(tmp_path), mock=True)
