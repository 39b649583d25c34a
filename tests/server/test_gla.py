"""recurd serve on a GLA model (fla's GLAForCausalLM format), end to end:
the same API, sessions, snapshots and batching as Mamba.

Random-weight GLA models written by make_model.py --arch gla (the shipped
GLA checkpoint, when present, is exercised by tests/cli and test_engine).
"""
import os
import threading

import pytest
import requests

from conftest import Server, make_model

TEXT = ("This program is free software: you can redistribute it and/or modify it "
        "under the terms of the GNU General Public License. ") * 6


@pytest.fixture(scope="module")
def gla(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("gla"))
    make_model(d, seed=3, arch="gla")
    s = Server(d)
    yield s
    s.stop()


@pytest.fixture(scope="module")
def gla_llama(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("gla_llama"))
    make_model(d, seed=4, arch="gla", llama_tokenizer=True)
    s = Server(d)
    yield s
    s.stop()


def post(s, path, **kw):
    r = requests.post(s.base + path, timeout=60, **kw)
    assert r.status_code < 300, (path, r.status_code, r.text)
    return r.json() if r.headers.get("Content-Type", "").startswith("application/json") else r


def lps(resp):
    """The per-token log-probs of an append (None where nothing predicted it)."""
    return [t.get("logprob") for t in resp["tokens"]]


def new_session(s):
    return post(s, "/v1/sessions", json={})["id"]


def test_models_says_gla(gla):
    m = requests.get(gla.base + "/v1/models", timeout=10).json()["data"][0]
    assert m["arch"] == "gla"
    # 2 layers x (2 kv heads x dk 8 x dv 16 + 3 conv taps x (32 + 16 + 32)) + 64 last row
    assert m["state_bytes"] == 4 * (2 * (2 * 8 * 16 + 3 * 80) + 64)


def test_stream_score_generate_snapshot_fork(gla):
    sid = new_session(gla)
    # streamed text/plain in pieces, then JSON appends
    r = requests.post(f"{gla.base}/v1/sessions/{sid}/append",
                      data=iter([TEXT[:100].encode(), TEXT[100:].encode()]),
                      headers={"Content-Type": "text/plain"}, timeout=60)
    assert r.status_code == 200, r.text
    n0 = r.json()["position"]
    assert n0 == len(TEXT.encode())  # byte-level codec: one id per byte
    a = post(gla, f"/v1/sessions/{sid}/append", json={"text": " More text.", "logprobs": True})
    assert a["position"] == n0 + len(" More text.")
    assert len(lps(a)) == len(" More text.") and None not in lps(a)
    # stateless scoring of the same text agrees with the session's numbers
    sc = post(gla, "/v1/score", json={"text": TEXT + " More text."})
    assert sc["n_tokens"] == n0 + len(" More text.")
    # generation: same seed, same tokens; no commit leaves the session alone
    g1 = post(gla, f"/v1/sessions/{sid}/generate",
              json={"max_tokens": 12, "temperature": 0.9, "seed": 5, "commit": False})
    g2 = post(gla, f"/v1/sessions/{sid}/generate",
              json={"max_tokens": 12, "temperature": 0.9, "seed": 5, "commit": False})
    assert g1["text"] == g2["text"]
    # snapshot -> restore -> both continue identically (scores, tokens, state bytes)
    snap = requests.get(f"{gla.base}/v1/sessions/{sid}/state", timeout=30).content
    m = requests.get(gla.base + "/v1/models", timeout=10).json()["data"][0]
    assert len(snap) == m["snapshot_bytes"]
    cid = post(gla, "/v1/sessions", data=snap,
               headers={"Content-Type": "application/octet-stream"})["id"]
    outs = []
    for x in (sid, cid):
        ap = post(gla, f"/v1/sessions/{x}/append", json={"text": " END OF TERMS"})
        ge = post(gla, f"/v1/sessions/{x}/generate",
                  json={"max_tokens": 16, "temperature": 0.8, "seed": 7})
        st = requests.get(f"{gla.base}/v1/sessions/{x}/state", timeout=30).content
        outs.append((ap["nll"], ge["text"], st))
    assert outs[0] == outs[1]
    # fork goes its own way; the original does not move
    fid = post(gla, "/v1/sessions", json={"fork_of": sid})["id"]
    pos = requests.get(f"{gla.base}/v1/sessions/{sid}", timeout=10).json()["position"]
    post(gla, f"/v1/sessions/{fid}/append", json={"text": " and more"})
    assert requests.get(f"{gla.base}/v1/sessions/{sid}", timeout=10).json()["position"] == pos
    assert requests.get(f"{gla.base}/v1/sessions/{fid}", timeout=10).json()["position"] == pos + 9


def test_batched_sessions_match_alone(gla):
    """Sessions stepped together (the scheduler batches them) give the
    numbers each gives alone."""
    alone = []
    for i in range(3):
        sid = new_session(gla)
        alone.append(post(gla, f"/v1/sessions/{sid}/append",
                          json={"text": TEXT[i * 7:], "logprobs": True}))
    got = [None] * 3

    def run(i):
        sid = new_session(gla)
        got[i] = post(gla, f"/v1/sessions/{sid}/append",
                      json={"text": TEXT[i * 7:], "logprobs": True})

    ts = [threading.Thread(target=run, args=(i,)) for i in range(3)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert [lps(g) for g in got] == [lps(a) for a in alone]


def test_llama_tokenizer_reads_bos_at_a_streams_start(gla_llama):
    s = gla_llama
    toks = post(s, "/v1/tokenize", json={"text": "hello world, the program"})["tokens"]
    assert 1 not in toks  # /v1/tokenize gives the text's ids, no BOS
    sid = new_session(s)
    a = post(s, f"/v1/sessions/{sid}/append", json={"text": "hello world, the program",
                                                    "logprobs": True})
    # <s> first (listed, nothing predicted it), then the text: every text
    # token is scored, the first from <s>'s prediction
    assert a["position"] == len(toks) + 1
    assert [t["id"] for t in a["tokens"]] == [1] + toks
    assert lps(a)[0] is None and None not in lps(a)[1:]
    b = post(s, f"/v1/sessions/{sid}/append", json={"text": " free software"})
    more = post(s, "/v1/tokenize", json={"text": " free software"})["tokens"]
    assert b["position"] == a["position"] + len(more)  # no second <s>
    # a streamed text/plain append at position 0 reads <s> too
    sid2 = new_session(s)
    r = requests.post(f"{s.base}/v1/sessions/{sid2}/append",
                      data=iter([b"hello wo", b"rld, the program"]),
                      headers={"Content-Type": "text/plain"}, timeout=60)
    assert r.status_code == 200, r.text
    assert r.json()["position"] == len(toks) + 1
    # an empty completion prompt starts from <s>
    c = post(s, "/v1/completions", json={"model": "x", "prompt": "", "max_tokens": 3,
                                         "temperature": 0, "seed": 1})
    assert c["usage"]["prompt_tokens"] == 1
