"""The official OpenAI client library (npm "openai", Node) talks to
/v1/completions: plain, echo+logprobs, streaming, and errors.

Needs node and the package: scripts/install-openai-client puts it in
build/openai-client (or point RECURD_OPENAI_MODULES at a node_modules dir).
Skips, saying why, when either is missing."""
import json
import os
import shutil
import subprocess

import pytest

from conftest import HERE, ROOT


def modules_dir():
    d = os.environ.get("RECURD_OPENAI_MODULES",
                       os.path.join(ROOT, "build", "openai-client", "node_modules"))
    return d if os.path.isdir(os.path.join(d, "openai")) else None


def test_openai_node_client(srv):
    node = shutil.which("node")
    if not node:
        pytest.skip("node is not installed")
    mods = modules_dir()
    if not mods:
        pytest.skip("npm package 'openai' not installed (run scripts/install-openai-client)")
    r = subprocess.run([node, os.path.join(HERE, "openai_client.js")], capture_output=True,
                       text=True, timeout=120,
                       env=dict(os.environ, RECURD_URL=srv.base, NODE_PATH=mods))
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout)
    assert len(out["models"]) == 1
    c = out["completion"]
    assert c["object"] == "text_completion"
    assert c["text"].startswith("Once upon a time")
    assert c["finish_reason"] == "length"
    n = len("Once upon a time") + 8  # byte-level test model: one token per byte
    assert len(c["logprobs"]["tokens"]) == n
    assert c["logprobs"]["token_logprobs"][0] is None
    assert c["usage"] == {"prompt_tokens": 16, "completion_tokens": 8, "total_tokens": 24}
    s = out["stream"]
    assert "Once upon a time" + s["text"] == c["text"]
    assert s["finish_reason"] == "length" and s["chunks"] >= 8
    assert out["error"] == {"status": 400, "type": "invalid_request"}
