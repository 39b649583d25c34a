"""recur's retries (docs/cluster.md): `recur stream` and `recur generate`
send an Idempotency-Key (32 hex digits, one per request, kept by its
retries) and send the request again through dropped connections and 503s
until --retry-deadline; a generate stream cut off and answered again with
the stored JSON result prints the text of one generation. Against a
scripted fake server (tests/clients_python/test_retries.py's), and a real
one that starts after the client."""
import importlib.util
import json
import os
import re
import threading
import time

import sys

from conftest import ROOT, Server, recur

# the fake server of the Python client's tests (which imports recur_client
# and its own conftest: both put on the path first)
sys.path.insert(0, os.path.join(ROOT, "clients", "python"))
_saved = sys.modules.pop("conftest")
_spec_c = importlib.util.spec_from_file_location(
    "conftest", os.path.join(ROOT, "tests", "clients_python", "conftest.py"))
sys.modules["conftest"] = importlib.util.module_from_spec(_spec_c)
_spec_c.loader.exec_module(sys.modules["conftest"])
_spec = importlib.util.spec_from_file_location(
    "py_retries", os.path.join(ROOT, "tests", "clients_python", "test_retries.py"))
py = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(py)
sys.modules["conftest"] = _saved
fake = py.fake
SID = py.SID


def test_stream_retries_each_segment_with_its_key(fake, tmp_path):
    path = "/v1/sessions/%s/append" % SID
    fake.script[path] = [("drop",), ("503", 0), ("json", py.SCORE)]
    f = tmp_path / "book.txt"
    f.write_text("It was the best of times.\nIt was the worst of times.\n" * 2000)
    r = recur("stream", str(f), "--session", SID, "--progress", "none", "--segment-bytes",
              "40000", url=fake.url)
    assert r.returncode == 0, r.stderr
    keys = [k for _, k, _ in fake.seen]
    assert all(re.fullmatch(r"[0-9a-f]{32}", k) for k in keys)
    first = [b for _, k, b in fake.seen if k == keys[0]]
    assert len(first) == 3 and first[0] == first[1] == first[2]  # the segment sent again whole
    data = f.read_bytes()
    assert data.startswith(first[0])
    # later segments: a fresh key each, answered at once
    assert len(set(keys)) == 1 + (len(keys) - 3)
    assert b"".join(b for _, k, b in fake.seen[2:]) == data
    assert "same Idempotency-Key" in r.stderr


def test_no_retry_when_off(fake, tmp_path):
    fake.script["/v1/sessions/%s/append" % SID] = [("503", 0)]
    f = tmp_path / "t.txt"
    f.write_text("x")
    r = recur("stream", str(f), "--session", SID, "--progress", "none", "--retry-deadline", "0",
              url=fake.url)
    assert r.returncode == 1 and len(fake.seen) == 1


def test_generate_cut_then_replayed(fake):
    path = "/v1/sessions/%s/generate" % SID
    toks = [{"type": "token", "token": {"id": 65 + i, "position": 10 + i}, "text": chr(65 + i),
             "position": 10 + i} for i in range(5)]
    stored = {"tokens": [65, 66, 67, 68, 69], "text": "ABCDE", "finish_reason": "length",
              "position": 15, "n_tokens": 5, "seed": 9, "committed": True}
    fake.script[path] = [("sse", toks[:2], True), ("json", stored)]
    r = recur("generate", "--session", SID, "--max-tokens", "5", url=fake.url)
    assert r.returncode == 0, r.stderr
    assert r.stdout == "ABCDE\n"
    bodies = [json.loads(b) for _, _, b in fake.seen]
    assert len({k for _, k, _ in fake.seen}) == 1 and len({b["seed"] for b in bodies}) == 1


def test_generate_cut_then_run_again(fake):
    path = "/v1/sessions/%s/generate" % SID
    toks = [{"type": "token", "token": {"id": 65 + i}, "text": chr(65 + i)} for i in range(4)]
    done = {"type": "done", "finish_reason": "length", "n_tokens": 4, "position": 14,
            "seed": 3, "committed": True}
    fake.script[path] = [("sse", toks[:3], True), ("sse", toks + [done], False)]
    r = recur("generate", "--session", SID, "--max-tokens", "4", "--seed", "3", url=fake.url)
    assert r.returncode == 0, r.stderr
    assert r.stdout == "ABCD\n"


def test_stream_before_the_server_starts(tiny, tmp_path):
    """Connection refused until a server listens: the upload goes through
    once. (A session of a server that is gone does not exist on the next
    one without a store, so this one is created by the new server's first
    request: here, recur stream makes it, after its own retries.)"""
    port = py.free_port()
    f = tmp_path / "t.txt"
    f.write_text("Call me Ishmael. " * 500)
    out = {}

    def later():
        time.sleep(1.5)
        out["srv"] = Server(tiny, "--port", str(port), "--quiet")

    t = threading.Thread(target=later)
    t.start()
    try:
        r = recur("stream", str(f), "--progress", "none", "--json", url="http://127.0.0.1:%d" % port)
    finally:
        t.join()
    try:
        assert r.returncode == 0, r.stderr
        j = json.loads(r.stdout)
        assert j["position"] == j["n_tokens"] == len(f.read_bytes())  # byte tokenizer
    finally:
        if "srv" in out:
            out["srv"].stop()
