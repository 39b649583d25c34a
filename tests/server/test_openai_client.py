"""The official OpenAI client library (npm "openai", Node) talks to
/v1/completions and /v1/models: list, retrieve, plain, echo+logprobs,
streaming, n > 1 (plain and streamed), the empty prompt, and errors (the
SDK's error classes and statuses).

Needs node and the package: scripts/install-openai-client puts it in
build/openai-client (or point RECURD_OPENAI_MODULES at a node_modules dir).
Without them the test skips, saying why — except in CI (env CI=true), where
it fails: .ci/run installs both, so a missing client there is a broken CI."""
import json
import os
import shutil
import subprocess

import pytest

from conftest import HERE, ROOT, Server

SP_MODEL = os.path.join(ROOT, "models", "recur-sp")


def modules_dir():
    d = os.environ.get("RECURD_OPENAI_MODULES",
                       os.path.join(ROOT, "build", "openai-client", "node_modules"))
    return d if os.path.isdir(os.path.join(d, "openai")) else None


def missing(why):
    if os.environ.get("CI", "").lower() in ("true", "1"):
        pytest.fail(f"{why}; CI must run this test (.ci/run installs it)")
    pytest.skip(why)


def test_openai_node_client(srv, models):
    node = shutil.which("node")
    if not node:
        missing("node is not installed")
    mods = modules_dir()
    if not mods:
        missing("npm package 'openai' not installed (run scripts/install-openai-client)")
    eos = Server(SP_MODEL)  # a tokenizer with <|endoftext|>, for the empty prompt
    auth = Server(models["a"], "--api-key", "right-key")
    try:
        r = subprocess.run([node, os.path.join(HERE, "openai_client.js")], capture_output=True,
                           text=True, timeout=120,
                           env=dict(os.environ, RECURD_URL=srv.base, RECURD_EOS_URL=eos.base,
                                    RECURD_AUTH_URL=auth.base, NODE_PATH=mods))
    finally:
        assert eos.stop() == 0
        assert auth.stop() == 0
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout)
    assert len(out["models"]) == 1
    assert out["retrieve"] == {"id": out["models"][0], "object": "model"}
    assert out["retrieve_missing"]["class"] == "NotFoundError"
    assert out["retrieve_missing"]["status"] == 404

    c = out["completion"]
    assert c["object"] == "text_completion"
    assert c["text"].startswith("Once upon a time")
    assert c["finish_reason"] == "length"
    n = len("Once upon a time") + 8  # byte-level test model: one token per byte
    assert len(c["logprobs"]["tokens"]) == n
    assert c["logprobs"]["token_logprobs"][0] is None
    assert c["usage"] == {"prompt_tokens": 16, "completion_tokens": 8, "total_tokens": 24}
    assert c["system_fingerprint"].startswith("fp_")
    s = out["stream"]
    assert "Once upon a time" + s["text"] == c["text"]
    assert s["finish_reason"] == "length" and s["chunks"] >= 8

    ch = out["n"]["choices"]
    assert [x["index"] for x in ch] == [0, 1]
    assert all(x["finish_reason"] == "length" for x in ch)
    assert out["n"]["usage"] == {"prompt_tokens": 16, "completion_tokens": 12,
                                 "total_tokens": 28}
    ns = out["n_stream"]
    assert ns["texts"] == {"0": ch[0]["text"], "1": ch[1]["text"]}
    assert ns["usage"] == out["n"]["usage"]

    assert out["empty_byte_model"]["class"] == "BadRequestError"
    assert out["empty_byte_model"]["status"] == 400
    e = out["empty"]
    assert e["text"] == e["ref"] and e["usage"]["prompt_tokens"] == 1

    for k in ("error", "error_n"):
        assert out[k]["class"] == "BadRequestError", out[k]
        assert out[k]["status"] == 400
    assert "best_of" in out["error_n"]["message"]
    assert out["error_auth"]["class"] == "AuthenticationError"
    assert out["error_auth"]["status"] == 401
