"""--state-dir: idle sessions spill to disk under memory pressure and come
back on demand; live sessions persist across a restart (same ids, same
owners, same states)."""
import os
import signal
import time

from conftest import Client, Server, error_of

STATE = 20480  # bytes of one state of the test model


def texts(n):
    return [f"session number {i} has its own history: " + "abc" * i for i in range(n)]


def create_retry(c, text):
    """Create + append, retrying while the budget is momentarily spent."""
    for _ in range(200):
        r = c.post("/v1/sessions", {})
        if r.status_code == 201:
            sid = r.json()["id"]
            c.append(sid, text)
            return sid
        error_of(r, 503)
        assert r.headers.get("Retry-After")
        time.sleep(0.02)
    raise AssertionError("never got a session")


def generate_retry(c, sid, **kw):
    """A generation holds a second state while it runs (counted in the
    budget): retry while the budget is momentarily spent."""
    for _ in range(200):
        r = c.post(f"/v1/sessions/{sid}/generate", kw)
        if r.status_code == 200:
            return r.json()
        error_of(r, 503)
        assert r.headers.get("Retry-After")
        time.sleep(0.02)
    raise AssertionError("never got room to generate")


def test_spill_and_restore_on_demand(models, tmp_path):
    d = tmp_path / "states"
    srv = Server(models["a"], "--state-dir", d, "--state-memory", 4 * STATE)
    ref = Server(models["a"])
    try:
        c, r = Client(srv), Client(ref)
        ids = [create_retry(c, t) for t in texts(10)]
        rids = [r.session(t) for t in texts(10)]
        time.sleep(0.3)
        listed = {s["id"]: s for s in c.ok(c.get("/v1/sessions"))["data"]}
        spilled = [i for i in ids if listed[i]["spilled"]]
        assert len(spilled) >= 6, "memory pressure did not spill idle sessions"
        files = os.listdir(d)
        assert all(any(f.startswith(i) for f in files) for i in spilled)
        m = c.get("/metrics").text
        live = int([l for l in m.splitlines() if l.startswith("recurd_state_bytes ")][0].split()[1])
        assert live <= 4 * STATE
        # every session, spilled or not, continues exactly like one that
        # never left memory
        for sid, rid in zip(ids, rids):
            assert c.info(sid)["position"] == r.info(rid)["position"]
            assert c.append(sid, " more") == r.append(rid, " more")
            assert generate_retry(c, sid, max_tokens=8, temperature=0)["tokens"] == \
                r.generate(rid, max_tokens=8, temperature=0)["tokens"]
            assert c.state(sid) == r.state(rid)
        # deleting a spilled session removes its file
        time.sleep(0.3)
        listed = {s["id"]: s for s in c.ok(c.get("/v1/sessions"))["data"]}
        victim = next(i for i in ids if listed[i]["spilled"])
        c.ok(c.req("DELETE", f"/v1/sessions/{victim}"))
        time.sleep(0.2)
        assert not any(f.startswith(victim) for f in os.listdir(d))
    finally:
        assert srv.stop() == 0
        assert ref.stop() == 0


def test_sessions_survive_restart(models, tmp_path):
    d = tmp_path / "states"
    srv = Server(models["a"], "--state-dir", d, "--api-key", "ka,kb")
    a, b = Client(srv, "ka"), Client(srv, "kb")
    sa = a.session("alpha's document")
    sb = b.session("beta's document, a different one")
    fresh = a.session()
    state_a, state_b = a.state(sa), b.state(sb)
    assert srv.stop() == 0
    assert any(l for l in srv.log() if "session(s) written" in l)
    assert len([f for f in os.listdir(d) if f.endswith(".state")]) == 3
    srv2 = Server(models["a"], "--state-dir", d, "--api-key", "ka,kb")
    try:
        a, b = Client(srv2, "ka"), Client(srv2, "kb")
        assert srv2.wait_log(r"3 session\(s\) restored from disk")
        ids_a = [s["id"] for s in a.ok(a.get("/v1/sessions"))["data"]]
        assert sorted(ids_a) == sorted([sa, fresh])
        assert [s["id"] for s in b.ok(b.get("/v1/sessions"))["data"]] == [sb]
        assert a.info(sa)["position"] == len("alpha's document")
        error_of(b.get(f"/v1/sessions/{sa}"), 404)  # owners survive too
        assert a.state(sa) == state_a and b.state(sb) == state_b
        assert a.info(fresh)["position"] == 0
    finally:
        assert srv2.stop() == 0


def test_other_models_files_left_alone(models, tmp_path):
    d = tmp_path / "states"
    srv = Server(models["a"], "--state-dir", d)
    Client(srv).session("made by model a")
    assert srv.stop() == 0
    other = Server(models["b"], "--state-dir", d)
    try:
        assert Client(other).ok(Client(other).get("/v1/sessions"))["data"] == []
        assert other.wait_log("files from another model were left alone")
        assert len(os.listdir(d)) == 1
    finally:
        assert other.stop() == 0
