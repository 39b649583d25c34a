"""Every Client method against the real server, and the properties the API
promises as seen through the client: typed results match the wire,
snapshot round trips continue identically, forks are independent."""
import math

import pytest

import recur_client
from recur_client import Client, combine_scores
from conftest import MORE, TEXT


def test_env_defaults(monkeypatch):
    monkeypatch.delenv("RECURD_URL", raising=False)
    monkeypatch.delenv("RECUR_URL", raising=False)
    monkeypatch.delenv("RECURD_API_KEY", raising=False)
    c = Client()
    assert c.url == "http://127.0.0.1:8080" and c.api_key is None
    monkeypatch.setenv("RECUR_URL", "http://example.invalid:9/")
    assert Client().url == "http://example.invalid:9"
    monkeypatch.setenv("RECURD_URL", "http://127.0.0.2:7")
    monkeypatch.setenv("RECURD_API_KEY", "k1")
    c = Client()
    assert c.url == "http://127.0.0.2:7" and c.api_key == "k1"
    assert Client(api_key="").api_key is None  # "" = explicitly none
    assert "k1" not in repr(c)
    with pytest.raises(ValueError):
        Client("ftp://host")
    with pytest.raises(ValueError):
        Client("http://host:1/?q=1")


def test_health_model_metrics(client):
    assert client.health() == "ok"
    client.wait_ready(timeout=5)
    m = client.model()
    assert isinstance(m, recur_client.ModelInfo)
    assert m.arch == "mamba2" and m.d_model == 64 and m.n_layer == 2
    assert m.vocab_size == 256 and m.tokenizer == "byte" and len(m.fingerprint) == 16
    assert m.state_bytes == 4 * (2 * (3 * 160 + 8 * 16 * 16) + 64)
    assert m.snapshot_bytes > m.state_bytes
    assert m.raw["object"] == "model"
    client.append(client.create_session(), TEXT)
    t = client.metrics()
    tok = [l for l in t.splitlines() if l.startswith('recurd_tokens_total{kind="input"}')]
    assert int(tok[0].split()[-1]) >= len(TEXT.encode())


def test_session_lifecycle(client):
    s = client.create_session()
    assert isinstance(s, recur_client.Session)
    assert len(s.id) == 32 and s.position == 0 and not s.busy
    assert s.state_bytes == client.model().state_bytes
    assert s.id in [x.id for x in client.list_sessions()]
    r = client.append(s, TEXT)
    got = client.get_session(s.id)  # by id or by Session
    assert got.id == s.id and got.position == r.position == len(TEXT.encode())
    assert client.get_session(s).position == got.position
    assert got.expires_in > 0 and got.last_used >= got.created
    client.delete_session(s)
    assert s.id not in [x.id for x in client.list_sessions()]
    with pytest.raises(recur_client.NotFound):
        client.get_session(s)


def test_append_typed_result(client):
    s = client.create_session()
    r = client.append(s, TEXT, logprobs=True, top_logprobs=3)
    n = len(TEXT.encode())
    assert isinstance(r, recur_client.ScoreResult)
    assert r.n_tokens == n and r.n_scored == n - 1 and r.position == n
    assert [t.id for t in r.tokens] == list(TEXT.encode())
    assert "".join(t.text for t in r.tokens) == TEXT
    assert r.tokens[0].logprob is None and r.logprobs[0] is None
    lps = r.logprobs[1:]
    assert all(lp <= 0 for lp in lps)
    assert math.isclose(r.nll_sum, -sum(lps), rel_tol=1e-9)
    assert math.isclose(r.nll, -sum(lps) / len(lps), rel_tol=1e-9)
    assert math.isclose(r.ppl, math.exp(r.nll), rel_tol=1e-9)
    for t in r.tokens[1:]:
        assert len(t.top_logprobs) == 3
        assert t.top_logprobs[0].logprob >= t.top_logprobs[2].logprob
    assert sum(b.n for b in r.buckets) == n - 1
    assert (r.buckets[0].start, r.buckets[0].end) == (0, 1)
    for b in r.buckets:
        assert math.isclose(b.ppl, math.exp(b.nll), rel_tol=1e-9)
    # the typed fields are the wire's
    assert r.nll == r.raw["nll"] and r.buckets[-1].n == r.raw["buckets"][-1]["n"]
    # without logprobs no details
    r2 = client.append(s, MORE)
    assert r2.tokens is None and r2.logprobs is None and r2.n_scored == len(MORE.encode())


def test_append_tokens_equals_text_and_score(client):
    a, b = client.create_session(), client.create_session()
    ids = client.tokenize(TEXT)
    assert ids == list(TEXT.encode())
    ra = client.append(a, TEXT, logprobs=True)
    rb = client.append(b, ids, logprobs=True)
    assert ra == rb and ra.raw == rb.raw
    assert client.get_state(a) == client.get_state(b)
    # /v1/score is a stateless append from the zero state
    assert client.score(TEXT, logprobs=True).raw == ra.raw
    assert client.score(ids).nll_sum == ra.nll_sum
    with pytest.raises(TypeError):
        client.append(a, b"bytes are not text")
    with pytest.raises(TypeError):
        client.append(a, [1, 2.5])
    with pytest.raises(TypeError):
        client.append(a, [True])


def test_combine_scores_equals_one_append(client):
    a, b = client.create_session(), client.create_session()
    whole = client.append(a, TEXT + MORE, logprobs=True)
    parts = [client.append(b, TEXT, logprobs=True), client.append(b, MORE, logprobs=True)]
    c = combine_scores(parts)
    assert (c.n_tokens, c.n_scored, c.position) == (whole.n_tokens, whole.n_scored,
                                                     whole.position)
    assert c.logprobs == whole.logprobs  # the same per-token numbers
    assert math.isclose(c.nll_sum, whole.nll_sum, rel_tol=1e-12)
    assert [(x.start, x.end, x.n) for x in c.buckets] == \
        [(x.start, x.end, x.n) for x in whole.buckets]
    for x, y in zip(c.buckets, whole.buckets):
        assert math.isclose(x.nll, y.nll, rel_tol=1e-9)
    with pytest.raises(ValueError):
        combine_scores([])


def test_generate_and_stream_same_seed(client):
    s = client.create_session()
    client.append(s, TEXT)
    g = client.generate(s, max_tokens=20, temperature=0.9, seed=5, commit=False, logprobs=True)
    assert isinstance(g, recur_client.GenerateResult)
    assert g.n_tokens == 20 == len(g.tokens) and g.finish_reason == "length"
    assert g.seed == 5 and not g.committed and g.position == len(TEXT.encode())
    assert [t.id for t in g.logprobs] == g.tokens
    events = []
    with client.generate_stream(s, max_tokens=20, temperature=0.9, seed=5,
                                commit=False) as st:
        for ev in st:
            events.append(ev)
    toks = [e for e in events if isinstance(e, recur_client.TokenEvent)]
    done = events[-1]
    assert isinstance(done, recur_client.DoneEvent) and done is st.done
    assert all(isinstance(e, recur_client.TokenEvent) for e in events[:-1])
    assert [e.id for e in toks] == g.tokens == st.tokens
    assert "".join(e.text for e in events) == g.text == st.text
    assert (done.finish_reason, done.n_tokens, done.seed, done.committed) == \
        ("length", 20, 5, False)
    assert client.get_session(s).position == len(TEXT.encode())  # commit false
    # result() gives the same summary; committing advances the session
    st2 = client.generate_stream(s, max_tokens=20, temperature=0.9, seed=5)
    r = st2.result()
    assert r.tokens == g.tokens and r.text == g.text and r.committed
    assert client.get_session(s).position == len(TEXT.encode()) + 20
    assert list(st2) == []  # a finished stream yields nothing more


def test_generate_stream_logprobs_and_stop(client):
    s = client.create_session()
    client.append(s, TEXT)
    g = client.generate(s, max_tokens=6, temperature=0.7, seed=11, commit=False,
                        logprobs=True, top_logprobs=2)
    st = client.generate_stream(s, max_tokens=6, temperature=0.7, seed=11, commit=False,
                                logprobs=True, top_logprobs=2)
    r = st.result()
    assert [t.id for t in r.logprobs] == g.tokens
    for a, b in zip(r.logprobs, g.logprobs):
        assert a.logprob == b.logprob and len(a.top_logprobs) == 2
    # stop: a long greedy-free generation, cut at a printable pair it produced
    long = client.generate(s, max_tokens=200, temperature=1.0, seed=3, commit=False)
    text = long.text
    at = next(i for i in range(10, len(text) - 1)
              if text[i:i + 2].isascii() and text[i:i + 2].isprintable())
    stop = text[at:at + 2]
    cut = text.index(stop)
    gs = client.generate(s, max_tokens=200, temperature=1.0, seed=3, commit=False, stop=stop)
    ss = client.generate_stream(s, max_tokens=200, temperature=1.0, seed=3, commit=False,
                                stop=[stop]).result()
    assert gs.finish_reason == ss.finish_reason == "stop"
    assert gs.text == ss.text == text[:cut]


def test_generate_stream_close_early(client):
    s = client.create_session()
    client.append(s, TEXT)
    st = client.generate_stream(s, max_tokens=100000)
    first = next(iter(st))
    assert isinstance(first, recur_client.TokenEvent)
    st.close()
    assert list(st) == [] and st.done is None
    # the server notices the disconnect and frees the session
    import time
    end = time.time() + 10
    while client.get_session(s).busy and time.time() < end:
        time.sleep(0.05)
    # nothing of the abandoned generation was committed
    assert client.get_session(s).position == len(TEXT.encode())
    assert client.append(s, "x").n_tokens == 1


def test_snapshot_round_trip(client):
    a = client.create_session()
    client.append(a, TEXT)
    snap = client.get_state(a)
    assert isinstance(snap, bytes) and len(snap) == client.model().snapshot_bytes
    b = client.restore(snap)
    assert b.id != a.id and b.position == len(TEXT.encode())
    assert client.get_state(b) == snap
    ra = client.append(a, MORE, logprobs=True)
    rb = client.append(b, MORE, logprobs=True)
    assert ra.raw == rb.raw, "restored session scores differently"
    ga = client.generate(a, max_tokens=16, temperature=0.8, seed=9)
    gb = client.generate(b, max_tokens=16, temperature=0.8, seed=9)
    assert ga.tokens == gb.tokens
    # PUT into an existing session that read something else
    d = client.create_session()
    client.append(d, "something else entirely")
    info = client.put_state(d, snap)
    assert info.id == d.id and info.position == len(TEXT.encode())
    assert client.get_state(d) == snap
    assert client.append(d, MORE).raw == client.append(client.restore(snap), MORE).raw


def test_named_snapshots(client):
    a = client.create_session()
    client.append(a, TEXT)
    name = "pyclient-intro"
    for n in [x.name for x in client.list_snapshots()]:
        if n == name:
            client.delete_snapshot(n)
    info = client.save_snapshot(a, name)
    assert info.name == name and info.position == len(TEXT.encode())
    assert info.bytes == client.model().snapshot_bytes
    listed = {x.name: x for x in client.list_snapshots()}
    assert listed[name].bytes == info.bytes and listed[name].created > 0
    assert client.get_snapshot(name) == client.get_state(a)
    with pytest.raises(recur_client.Conflict) as e:
        client.save_snapshot(a, name)
    assert e.value.status == 409 and e.value.code == "conflict"
    client.append(a, MORE)
    assert client.save_snapshot(a, name, overwrite=True).position == \
        len((TEXT + MORE).encode())
    b = client.create_session(snapshot=name)
    assert b.position == len((TEXT + MORE).encode())
    assert client.get_state(b) == client.get_state(a)
    client.delete_snapshot(name)
    assert name not in [x.name for x in client.list_snapshots()]
    with pytest.raises(recur_client.NotFound):
        client.get_snapshot(name)
    with pytest.raises(recur_client.NotFound):
        client.create_session(snapshot=name)
    with pytest.raises(recur_client.InvalidSnapshotName) as e:
        client.save_snapshot(a, ".hidden")
    assert isinstance(e.value, recur_client.BadRequest) and e.value.status == 400


def test_fork_independence(client):
    a = client.create_session()
    client.append(a, TEXT)
    before = client.get_state(a)
    b = client.fork(a)
    assert b.id != a.id and b.position == len(TEXT.encode())
    assert client.get_state(b) == before
    client.append(b, " and the fork goes its own way")
    client.generate(b, max_tokens=5, seed=1)
    assert client.get_state(a) == before, "writing the fork changed the original"
    ra = client.append(a, MORE, logprobs=True)
    ctl = client.create_session()
    client.append(ctl, TEXT)
    assert client.append(ctl, MORE, logprobs=True).raw == ra.raw
    assert client.create_session(fork_of=a.id).position == ra.position
    with pytest.raises(ValueError):
        client.create_session(fork_of=a, snapshot="x")


def test_completions(client):
    r = client.completions("Once upon", max_tokens=5, temperature=0, logprobs=2, echo=True,
                           model="whatever")
    assert isinstance(r, recur_client.Completion)
    assert r.text.startswith("Once upon") and r.finish_reason == "length"
    assert r.model == "whatever" and r.id.startswith("cmpl-")
    assert r.usage == {"prompt_tokens": 9, "completion_tokens": 5, "total_tokens": 14}
    assert r.logprobs["token_logprobs"][0] is None
    s = client.score("Once upon", logprobs=True)
    for x, y in zip(r.logprobs["token_logprobs"][1:9], s.logprobs[1:]):
        assert math.isclose(x, y, abs_tol=1e-5)
    st = client.completions_stream("Once upon", max_tokens=5, temperature=0,
                                   include_usage=True)
    chunks = list(st)
    assert st.finished and "Once upon" + st.text == r.text
    assert st.finish_reason == "length" and st.usage["completion_tokens"] == 5
    assert all(isinstance(c, recur_client.CompletionChunk) for c in chunks)
    tok = client.completions(list(b"Hi there"), max_tokens=3, temperature=0)
    assert tok.text == client.completions("Hi there", max_tokens=3, temperature=0).text
    with pytest.raises(ValueError):
        client.completions("x", stream=True)


def test_tokenize_detokenize(client):
    s = "naïve café — 東京 🙂"
    ids = client.tokenize(s)
    assert ids == list(s.encode())
    pieces = client.tokenize_pieces(s)
    assert [p.id for p in pieces] == ids
    assert pieces[0].text == "n"
    multi = [p for p in pieces if p.bytes is not None]
    assert multi and all(len(p.bytes) == 1 for p in multi)
    assert client.detokenize(ids) == s
    assert client.detokenize([0x61, 0x80]) == "a\ufffd"
    with pytest.raises(TypeError):
        client.detokenize("not ids")
