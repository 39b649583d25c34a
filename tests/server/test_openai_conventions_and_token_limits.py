"""Issue 12, items 4 and 10: per-token response bodies are bounded and built
without a JSON tree per token; OpenAI conventions on /v1/completions and
/v1/models (retrieve, n > 1, empty prompt, system_fingerprint).

The byte-level test model (make_model.py: id = byte, no end-of-text token)
serves most tests; models/recur-sp (a real BPE tokenizer with
<|endoftext|>) the empty-prompt ones."""
import json
import os
import threading
import time

import pytest
import requests

from conftest import ROOT, Client, Server, error_of, sse_events

SP_MODEL = os.path.join(ROOT, "models", "recur-sp")


@pytest.fixture(scope="module")
def small(models):
    """A server whose per-token detail limit is 16 entries."""
    s = Server(models["a"], "--detail-limit", "16")
    yield s
    assert s.stop() == 0, "\n".join(s.log()[-20:])


@pytest.fixture(scope="module")
def sp():
    assert os.path.exists(os.path.join(SP_MODEL, "model.safetensors")), SP_MODEL
    s = Server(SP_MODEL)
    yield s
    assert s.stop() == 0, "\n".join(s.log()[-20:])


def vm_hwm_mib(srv):
    with open(f"/proc/{srv.p.pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def asan(srv):
    with open(f"/proc/{srv.p.pid}/maps") as f:
        return "libasan" in f.read()


# ---- item 4: bounded per-token bodies ------------------------------------------


def test_tokenize_pieces_stop_at_the_detail_limit(small):
    c = Client(small)
    text = "héllo wörld, 40 bytes of text to tokenize"
    n = len(text.encode())
    r = c.ok(c.post("/v1/tokenize", {"text": text, "with_pieces": True}))
    assert r["n_tokens"] == n and len(r["tokens"]) == n  # the ids are the result: all of them
    assert len(r["pieces"]) == 16 and r["pieces_truncated"] is True
    assert [p["id"] for p in r["pieces"]] == r["tokens"][:16]
    r = c.ok(c.post("/v1/tokenize", {"text": "short", "with_pieces": True}))
    assert len(r["pieces"]) == 5 and r["pieces_truncated"] is False
    r = c.ok(c.post("/v1/tokenize", {"text": text}))
    assert "pieces" not in r and "pieces_truncated" not in r and len(r["tokens"]) == n


def test_tokenize_body_escapes_every_piece(c):
    """The body is written by hand now: quotes, backslashes, controls and
    the bytes of a split character must come out as jansson wrote them."""
    text = 'a"b\\c\n\t\x01\x7f/é😀\u2028'
    r = c.ok(c.post("/v1/tokenize", {"text": text, "with_pieces": True}))
    raw = text.encode()
    assert r["tokens"] == list(raw)
    for b, p in zip(raw, r["pieces"]):
        assert p["id"] == b
        if b < 0x80:
            assert p["text"] == chr(b) and "bytes" not in p, p
        else:  # one byte of a multi-byte character: not UTF-8 on its own
            assert p["text"] == "\ufffd" and p["bytes"] == [b], p
    assert r["pieces_truncated"] is False
    back = c.ok(c.post("/v1/detokenize", {"tokens": r["tokens"]}))
    assert back["text"] == text


def test_tokenize_megabytes_bounded_memory_and_health(models):
    """1 MB of emoji is ~1M byte tokens. With a jansson object per token the
    server peaked near 900 MB and /health waited 3 s behind the body."""
    srv = Server(models["a"])
    try:
        text = "😀🎉👍🏽🙂" * ((1 << 20) // 19)
        base = vm_hwm_mib(srv)
        lat, stop = [], threading.Event()

        def poll():
            while not stop.is_set():
                t = time.monotonic()
                assert requests.get(srv.url("/health"), timeout=30).status_code == 200
                lat.append(time.monotonic() - t)
                time.sleep(0.01)

        th = threading.Thread(target=poll)
        th.start()
        try:
            r = requests.post(srv.url("/v1/tokenize"), json={"text": text, "with_pieces": True},
                              timeout=120)
        finally:
            stop.set()
            th.join(60)
        assert r.status_code == 200
        grew = vm_hwm_mib(srv) - base
        if not asan(srv):  # ASan's allocator keeps freed memory in quarantine by design
            assert grew < 200, f"peak RSS grew {grew:.0f} MiB"
        assert lat and max(lat) < 1.5, f"/health took {max(lat):.2f} s"
        body = r.json()
        assert body["n_tokens"] == len(text.encode())
        assert len(body["pieces"]) == 4096 and body["pieces_truncated"] is True
    finally:
        assert srv.stop() == 0


def test_generate_stream_logprobs_past_the_detail_limit(small):
    """A stream sends each token's row with it: past the limit the rows
    must still be the token's own, not the last row kept, again."""
    c = Client(small)
    sid = c.session("The stream reads this first.")
    body = {"max_tokens": 24, "temperature": 1.0, "seed": 3, "logprobs": True,
            "top_logprobs": 2, "commit": False}
    plain = c.generate(sid, **body)
    r = c.post(f"/v1/sessions/{sid}/generate", dict(body, stream=True), stream=True)
    toks = [e["token"] for e in sse_events(r) if e["type"] == "token"]
    assert [t["id"] for t in toks] == plain["tokens"]
    assert all("logprob" in t for t in toks)
    assert [t["logprob"] for t in toks[:16]] == [t["logprob"] for t in plain["logprobs"]]
    assert len(plain["logprobs"]) == 16 and plain["logprobs_truncated"] is True
    assert [t["id"] for t in plain["logprobs"]] == plain["tokens"][:16]


def test_completions_stream_logprobs_past_the_detail_limit(small, c):
    body = {"prompt": "Once upon", "max_tokens": 24, "temperature": 1.0, "seed": 9,
            "logprobs": 1}
    # the same model with the default limit: all 24 rows
    full = c.ok(c.post("/v1/completions", body))["choices"][0]
    assert len(full["logprobs"]["tokens"]) == 24
    s = Client(small)
    r = s.post("/v1/completions", dict(body, stream=True), stream=True)
    chunks = [e for e in sse_events(r) if e != "[DONE]"]
    lps = [e["choices"][0]["logprobs"] for e in chunks if e["choices"][0]["logprobs"]]
    # every generated token has its own row, past the limit too
    assert [t for x in lps for t in x["tokens"]] == full["logprobs"]["tokens"]
    assert [t for x in lps for t in x["token_logprobs"]] == full["logprobs"]["token_logprobs"]
    assert "".join(e["choices"][0]["text"] for e in chunks) == full["text"]
    plain = s.ok(s.post("/v1/completions", body))["choices"][0]
    assert plain["logprobs"]["tokens"] == full["logprobs"]["tokens"][:16]
    assert plain["logprobs_truncated"] is True


def test_completions_echo_logprobs_share_one_detail_limit(small):
    """echo + logprobs: the prompt's rows and the generated rows together
    are the response's per-token entries, so together they stop at the
    limit (before: each stopped at it, twice the limit in one answer)."""
    c = Client(small)
    r = c.ok(c.post("/v1/completions", {"prompt": "0123456789", "max_tokens": 10,
                                        "temperature": 0, "logprobs": 0, "echo": True}))
    ch = r["choices"][0]
    assert len(ch["logprobs"]["tokens"]) == 16
    assert ch["logprobs_truncated"] is True
    assert r["usage"]["completion_tokens"] == 10
    r = c.ok(c.post("/v1/completions", {"prompt": "0123", "max_tokens": 4, "temperature": 0,
                                        "logprobs": 0, "echo": True}))
    assert len(r["choices"][0]["logprobs"]["tokens"]) == 8
    assert "logprobs_truncated" not in r["choices"][0]
    # n choices share the limit: 16 / 2 entries each
    r = c.ok(c.post("/v1/completions", {"prompt": "0123456789", "max_tokens": 10, "n": 2,
                                        "temperature": 0, "logprobs": 0, "echo": True}))
    for ch in r["choices"]:
        assert len(ch["logprobs"]["tokens"]) == 8 and ch["logprobs_truncated"] is True
        assert ch["logprobs"]["tokens"] == list("01234567")


# ---- item 10: OpenAI conventions -------------------------------------------------


def test_models_retrieve(c):
    listed = c.ok(c.get("/v1/models"))["data"]
    assert len(listed) == 1
    mid = listed[0]["id"]
    one = c.ok(c.get(f"/v1/models/{mid}"))
    assert one == listed[0] and one["object"] == "model"
    e = error_of(c.get("/v1/models/not-" + mid), 404)
    assert "not-" + mid in e["message"] and mid in e["message"]
    error_of(c.get("/v1/models/"), 404)
    error_of(c.get("/v1/models/" + "x" * 300), 404)
    r = c.post(f"/v1/models/{mid}", {})
    assert r.status_code == 405 and r.headers["Allow"] == "GET"


def completion(c, **kw):
    return c.ok(c.post("/v1/completions", kw))


def test_completions_n_choices_fork_the_prompt(c):
    body = {"prompt": "Once upon a time", "max_tokens": 12, "temperature": 1.0, "seed": 5}
    r = completion(c, n=3, **body)
    ch = r["choices"]
    assert [x["index"] for x in ch] == [0, 1, 2]
    # choice i is the one-choice answer with seed + i
    singles = [completion(c, **dict(body, seed=5 + i))["choices"][0] for i in range(3)]
    assert [x["text"] for x in ch] == [x["text"] for x in singles]
    assert len({x["text"] for x in ch}) > 1, "three samples, all the same"
    assert r["usage"] == {"prompt_tokens": 16, "completion_tokens": 36, "total_tokens": 52}
    # best_of equal to n is accepted; echo and logprobs apply to each choice
    r = completion(c, n=2, best_of=2, echo=True, logprobs=1, **body)
    for x, s in zip(r["choices"], singles):
        assert x["text"] == "Once upon a time" + s["text"]
        assert len(x["logprobs"]["tokens"]) == 16 + 12


def test_completions_n_stream_carries_each_index(c):
    body = {"prompt": "Once upon a time", "max_tokens": 10, "temperature": 1.0, "seed": 11,
            "n": 3, "stop": ["\n"]}
    plain = completion(c, **body)
    r = c.post("/v1/completions", dict(body, stream=True, stream_options={"include_usage": True}),
               stream=True)
    ev = sse_events(r)
    assert ev[-1] == "[DONE]" and ev.count("[DONE]") == 1
    usage = [e for e in ev[:-1] if e.get("usage")]
    assert len(usage) == 1 and usage[0]["usage"] == plain["usage"]
    # the choices generate side by side: their chunks interleave
    order = [x["index"] for e in ev[:-1] for x in e["choices"]]
    assert order != sorted(order), order
    text, finish = {}, {}
    for e in ev[:-1]:
        for x in e["choices"]:
            text[x["index"]] = text.get(x["index"], "") + x["text"]
            if x["finish_reason"]:
                assert x["index"] not in finish
                finish[x["index"]] = x["finish_reason"]
    assert text == {x["index"]: x["text"] for x in plain["choices"]}
    assert finish == {x["index"]: x["finish_reason"] for x in plain["choices"]}


def test_completions_n_limits(c):
    e = error_of(c.post("/v1/completions", {"prompt": "a", "n": 17}), 400)
    assert "'n'" in e["message"]
    e = error_of(c.post("/v1/completions", {"prompt": "a", "n": 2, "best_of": 3}), 400)
    assert "best_of" in e["message"]
    e = error_of(c.post("/v1/completions", {"prompt": "a", "best_of": 2}), 400)
    assert "best_of" in e["message"]
    e = error_of(c.post("/v1/completions", {"prompt": "a", "n": 0}), 400)
    assert "'n'" in e["message"]


def test_completions_n_counts_its_states(models):
    """n > 1 holds n + 1 states (the prompt's and one per choice): with
    room for two, n=1 runs and n=2 is refused for state memory."""
    probe = Server(models["a"])
    try:
        sb = Client(probe).ok(Client(probe).get("/v1/models"))["data"][0]["state_bytes"]
    finally:
        probe.stop()
    srv = Server(models["a"], "--state-memory", str(max(4096, 2 * sb + sb // 2)), "--max-n", "4")
    try:
        c = Client(srv)
        completion(c, prompt="abc", max_tokens=2, temperature=0)
        r = c.post("/v1/completions", {"prompt": "abc", "max_tokens": 2, "n": 2})
        error_of(r, 503)
        assert "Retry-After" in r.headers
        # nothing leaked: the one state is free again
        completion(c, prompt="abc", max_tokens=2, temperature=0)
    finally:
        assert srv.stop() == 0


def test_completions_empty_prompt_starts_from_end_of_text(sp):
    c = Client(sp)
    # <|endoftext|> is id 0 in recur-sp's tokenizer: the empty prompt is
    # generation after it, from the zero state
    ref = completion(c, prompt=[0], max_tokens=8, temperature=0)
    for p in ["", [], [""], [[]]]:
        r = completion(c, prompt=p, max_tokens=8, temperature=0)
        assert r["choices"][0]["text"] == ref["choices"][0]["text"], p
        assert r["usage"]["prompt_tokens"] == 1
    r = completion(c, prompt="", max_tokens=8, temperature=0, echo=True, logprobs=1)
    ch = r["choices"][0]
    assert ch["text"] == ref["choices"][0]["text"]  # nothing to echo
    assert ch["logprobs"]["text_offset"][0] == 0
    r = c.post("/v1/completions", {"prompt": "", "max_tokens": 8, "temperature": 0,
                                   "stream": True}, stream=True)
    ev = sse_events(r)
    assert "".join(e["choices"][0]["text"] for e in ev[:-1]) == ref["choices"][0]["text"]


def test_completions_empty_prompt_without_end_of_text_token(c):
    """The byte-level codec has no end-of-text token: nothing to start from."""
    for p in ["", []]:
        e = error_of(c.post("/v1/completions", {"prompt": p, "max_tokens": 2}), 400)
        assert "end-of-text" in e["message"]


def test_system_fingerprint_is_stable_per_build_and_model(c, models):
    body = {"prompt": "fp", "max_tokens": 2, "temperature": 0}
    a = completion(c, **body)["system_fingerprint"]
    assert a.startswith("fp_") and len(a) == 19
    assert completion(c, **dict(body, n=2))["system_fingerprint"] == a
    r = c.post("/v1/completions", dict(body, stream=True,
                                       stream_options={"include_usage": True}), stream=True)
    ev = sse_events(r)
    assert {e["system_fingerprint"] for e in ev[:-1]} == {a}
    other = Server(models["b"])  # another model: another fingerprint
    try:
        assert completion(Client(other), **body)["system_fingerprint"] not in (a, None)
    finally:
        assert other.stop() == 0
    again = Server(models["a"])  # the same build and model: the same one
    try:
        assert completion(Client(again), **body)["system_fingerprint"] == a
    finally:
        assert again.stop() == 0


# ---- the new requests under allocation failure (docs/reliability.md X4) -------------


def _fault_build():
    from test_reliability import fault_build
    return fault_build()


@pytest.mark.skipif(not _fault_build(),
                    reason="needs a -DRECUR_FAULT_INJECTION=ON binary (scripts/test --sanitize builds one)")
@pytest.mark.parametrize("persistent", [False, True])
def test_x4_new_requests_under_allocation_failure(models, tmp_path, persistent):
    """The Nth allocation of each new kind of request fails (and, persistent,
    every one after it): the answer is the normal one or a 503 (a stream
    already answered 200: an error event as its last), the server lives,
    and ASan finds no leak at exit."""
    from test_reliability import Faults
    srv = Server(models["a"], "--max-n", 4, "--detail-limit", 8,
                 env={"RECURD_FAULT_FILE": str(tmp_path / "fault")})
    try:
        c = Client(srv)
        faults = Faults(srv, tmp_path / "fault")
        prompt = "Faults, one allocation at a time."
        ref = completion(c, prompt=prompt, max_tokens=4, temperature=0)["choices"][0]["text"]
        toks = c.ok(c.post("/v1/tokenize", {"text": prompt}))["tokens"]
        mid = c.ok(c.get("/v1/models"))["data"][0]["id"]

        def cmpl_n():
            r = c.post("/v1/completions", {"prompt": prompt, "max_tokens": 4, "temperature": 0,
                                           "n": 2, "echo": True, "logprobs": 1})
            return r, None

        def cmpl_n_stream():
            r = c.post("/v1/completions", {"prompt": prompt, "max_tokens": 4, "temperature": 0,
                                           "n": 2, "stream": True,
                                           "stream_options": {"include_usage": True}},
                       stream=True)
            return r, (sse_events(r) if r.status_code == 200 else None)

        def check(kind, r, events):
            errs = [e for e in events or [] if isinstance(e, dict) and "error" in e]
            if errs:
                assert errs[-1] is events[-1], events[-3:]
                assert "out of memory" in errs[-1]["error"]["message"]
                return False
            if r.status_code != 200:
                error_of(r, 503)
                return False
            if kind == "completions-n":
                ch = r.json()["choices"]
                assert [x["text"] for x in ch] == [prompt + ref] * 2
                assert all(len(x["logprobs"]["tokens"]) == 4 for x in ch)  # 8 / n
            elif kind == "completions-n-stream":
                assert events[-1] == "[DONE]"
                texts = {}
                for e in events[:-1]:
                    for x in e["choices"]:
                        texts[x["index"]] = texts.get(x["index"], "") + x["text"]
                assert texts == {0: ref, 1: ref}
            elif kind == "tokenize-pieces":
                b = r.json()
                assert b["tokens"] == toks and len(b["pieces"]) == 8 and b["pieces_truncated"]
            elif kind == "model":
                assert r.json()["id"] == mid
            return True

        ops = {
            "completions-n": cmpl_n,
            "completions-n-stream": cmpl_n_stream,
            "tokenize-pieces": lambda: (c.post("/v1/tokenize", {"text": prompt,
                                                                "with_pieces": True}), None),
            "model": lambda: (c.get(f"/v1/models/{mid}"), None),
        }
        failed = dict.fromkeys(ops, 0)
        for kind, run in ops.items():
            n = 0
            while True:
                n += 1
                assert n < 3000, "sweep did not end"
                faults.arm(n, persistent)
                r, events = run()
                injected = faults.off()
                assert srv.alive(), f"died at allocation {n} of {kind}"
                if not check(kind, r, events):
                    assert injected > 0, (kind, n, r.status_code)
                    failed[kind] += 1
                    assert check(kind, *run()), (kind, n)  # and then it works
                if injected == 0:
                    break
        assert all(v > 0 for v in failed.values()), failed
        # nothing held: the state budget is back where it started
        completion(c, prompt=prompt, max_tokens=1, n=4)
    finally:
        assert srv.stop() == 0, "\n".join(srv.log()[-20:])


def test_completions_n_stream_client_leaves_mid_choice(models):
    """The client leaves an n=4 stream part-way: the job is cancelled and
    all five of its states go back (with room for exactly five, the next
    n=4 runs), and the server goes on."""
    probe = Server(models["a"])
    try:
        sb = Client(probe).ok(Client(probe).get("/v1/models"))["data"][0]["state_bytes"]
    finally:
        probe.stop()
    srv = Server(models["a"], "--state-memory", str(max(4096, 5 * sb + sb // 2)))
    try:
        c = Client(srv)
        for _ in range(3):
            r = c.post("/v1/completions", {"prompt": "leave", "max_tokens": 5000, "n": 4,
                                           "stream": True}, stream=True)
            assert r.status_code == 200
            seen = 0
            for line in r.iter_lines():
                seen += line.startswith(b"data: {")
                if seen >= 40:
                    break
            r.close()
            # the cancelled job gives its states back (at its done event)
            end = time.time() + 10
            while True:
                r = c.post("/v1/completions", {"prompt": "x", "max_tokens": 2, "n": 4})
                if r.status_code == 200 or time.time() > end:
                    break
                time.sleep(0.05)
            assert r.status_code == 200, r.text
            assert [x["index"] for x in r.json()["choices"]] == [0, 1, 2, 3]
        assert requests.get(srv.url("/health"), timeout=5).status_code == 200
    finally:
        assert srv.stop() == 0, "\n".join(srv.log()[-20:])
