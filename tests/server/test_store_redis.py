"""Sessions durable in Redis (--store, docs/cluster.md), against a real
redis-server (Debian's) that each test starts on a free loopback port with
append-only persistence (appendfsync always) and stops by PID.

What is checked: a session moves between replicas and reads on bit for
bit as if one process had read everything; an Idempotency-Key replays the
stored answer instead of applying a change twice; expected_position gives
409 with the position; with Redis down nothing is acknowledged (503 +
Retry-After) while reads go on, and after Redis restarts from its AOF
every acknowledged token is there; damaged or foreign data in the store is
refused (422), never loaded; a replica paused past its lease cannot
commit (fenced); a drain hands sessions off.

Without redis-server the tests skip, except under CI=true, where a
missing tool is a failure.
"""
import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time

import pytest
import requests

from conftest import Client, Server, error_of

REDIS = shutil.which("redis-server")
if not REDIS:
    if os.environ.get("CI") == "true":
        raise RuntimeError("redis-server is missing (scripts/install-deps installs it)")
    pytest.skip("redis-server not installed (apt-get install redis-server)", allow_module_level=True)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


class Redis:
    def __init__(self, d):
        self.dir = d
        self.port = free_port()
        self.p = None
        self.start()

    def start(self):
        self.p = subprocess.Popen(
            [REDIS, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir),
             "--appendonly", "yes", "--appendfsync", "always", "--save", "",
             "--maxmemory-policy", "noeviction"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(200):
            if self.cmd("PING").strip() == "PONG":
                return
            time.sleep(0.02)
        raise AssertionError("redis-server did not start")

    def stop(self, sig=signal.SIGKILL):
        if self.p and self.p.poll() is None:
            self.p.send_signal(sig)
            self.p.wait(10)

    def cmd(self, *args, raw=False):
        r = subprocess.run(["redis-cli", "-p", str(self.port), "--no-raw" if not raw else "--raw",
                            *map(str, args)], capture_output=True, timeout=10)
        return r.stdout if raw else r.stdout.decode(errors="replace")

    def hget(self, key, field):
        return subprocess.run(["redis-cli", "-p", str(self.port), "--raw", "HGET", key, field],
                              capture_output=True, text=True, timeout=10).stdout.strip()

    def lrange(self, key):
        out = subprocess.run(["redis-cli", "-p", str(self.port), "--raw", "LRANGE", key, "0", "-1"],
                             capture_output=True, text=True, timeout=10).stdout
        return [x for x in out.split("\n") if x]

    @property
    def url(self):
        return f"redis://127.0.0.1:{self.port}/0"


@pytest.fixture
def redis(tmp_path):
    r = Redis(tmp_path)
    yield r
    r.stop()


def replica(model, redis, name, *extra):
    return Server(model, "--store", redis.url, "--replica-id", name, "--store-audit",
                  "--lease-ms", "900", *extra)


def retry(fn, deadline=20):
    """Call fn until its answer is not a 503 (a session moving, a store
    coming back); the answer is returned."""
    end = time.time() + deadline
    while True:
        r = fn()
        if r.status_code != 503 or time.time() > end:
            return r
        assert r.headers.get("Retry-After"), r.text
        time.sleep(0.05)


def fp_of(c):
    return c.ok(c.get("/v1/models"))["data"][0]["fingerprint"]


def key(fp, sid, part):
    return f"recurd:{fp}:{{{sid}}}:{part}"


TEXTS = [
    "It was a bright cold day in April, and the clocks were striking thirteen. ",
    "The hallway smelt of boiled cabbage and old rag mats. At one end of it a coloured poster ",
    "had been tacked to the wall. It depicted simply an enormous face, more than a metre wide. ",
    "Outside, even through the shut window-pane, the world looked cold. Down in the street ",
]


def logprobs(body):
    return [t["logprob"] for t in body["tokens"]]


def test_a_session_moves_between_replicas_bit_for_bit(models, redis):
    """Appends alternate between two replicas (each move a handoff); the
    scores, a seeded generation and the final state equal one process's."""
    ref = Server(models["a"])
    r1 = replica(models["a"], redis, "r1")
    r2 = replica(models["a"], redis, "r2")
    try:
        c0, c1, c2 = Client(ref), Client(r1), Client(r2)
        s0 = c0.session()
        want = [logprobs(c0.append(s0, t, logprobs=True)) for t in TEXTS]
        gen0 = c0.generate(s0, max_tokens=24, seed=11)
        want.append(logprobs(c0.append(s0, "Then it ended.", logprobs=True)))
        state0 = c0.state(s0)

        r = c1.post("/v1/sessions", {})
        assert r.status_code == 201 and r.headers["X-Recurd-Replica"] == "r1"
        sid = r.json()["id"]
        got = []
        for i, t in enumerate(TEXTS):
            c = (c1, c2)[i % 2]
            r = retry(lambda: c.post(f"/v1/sessions/{sid}/append", {"text": t, "logprobs": True},
                                     headers={"Idempotency-Key": f"a{i}"}))
            assert r.status_code == 200, r.text
            assert r.headers["X-Recurd-Replica"] == ("r1", "r2")[i % 2]
            got.append(logprobs(r.json()))
        r = retry(lambda: c1.post(f"/v1/sessions/{sid}/generate", {"max_tokens": 24, "seed": 11},
                                  headers={"Idempotency-Key": "g"}))
        gen = c1.ok(r)
        r = retry(lambda: c2.post(f"/v1/sessions/{sid}/append",
                                  {"text": "Then it ended.", "logprobs": True}))
        got.append(logprobs(c2.ok(r)))
        assert got == want  # bit for bit: every log-prob, every move a handoff
        assert gen["text"] == gen0["text"] and gen["position"] == gen0["position"]
        assert c2.state(sid) == state0

        fp = fp_of(c1)
        audit = redis.lrange(key(fp, sid, "audit"))
        # "epoch replica from to": contiguous, each epoch one replica, never
        # two replicas advancing the session under one epoch
        pos, last_epoch, owners = 0, 0, {}
        for line in audit:
            e, rep, a, b = line.split()[:4]
            e, a, b = int(e), int(a), int(b)
            assert a == pos and b >= a and e >= last_epoch, audit
            assert owners.setdefault(e, rep) == rep, audit
            pos, last_epoch = b, e
        assert pos == c2.info(sid)["position"]
        assert len(set(owners.values())) == 2
        m = c1.get("/metrics").text
        if shutil.which("promtool"):
            lint = subprocess.run(["promtool", "check", "metrics"], input=m.encode(),
                                  capture_output=True)
            assert lint.returncode == 0, lint.stdout + lint.stderr
        for name in ("recurd_store_restore_seconds_bucket", "recurd_store_commit_seconds_count",
                     "recurd_store_handoffs_total{reason=\"asked\"}", "recurd_store_fenced_total"):
            assert name in m, name
    finally:
        for s in (ref, r1, r2):
            s.stop(signal.SIGKILL)


def test_retries_replay_the_stored_answer(models, redis):
    r1 = replica(models["a"], redis, "r1")
    try:
        c = Client(r1)
        sid = c.session()
        h = {"Idempotency-Key": "chunk-1"}
        a = c.post(f"/v1/sessions/{sid}/append", {"text": TEXTS[0], "logprobs": True}, headers=h)
        b = c.post(f"/v1/sessions/{sid}/append", {"text": TEXTS[0], "logprobs": True}, headers=h)
        assert a.status_code == b.status_code == 200
        assert b.headers.get("Idempotent-Replayed") == "true" and "Idempotent-Replayed" not in a.headers
        assert a.content == b.content
        n = a.json()["position"]
        assert c.info(sid)["position"] == n  # applied once
        # the same key on a text/plain upload
        h2 = {"Idempotency-Key": "chunk-2", "Content-Type": "text/plain"}
        a = c.post(f"/v1/sessions/{sid}/append", data=TEXTS[1].encode(), headers=h2)
        b = c.post(f"/v1/sessions/{sid}/append", data=TEXTS[1].encode(), headers=h2)
        assert a.content == b.content and b.headers.get("Idempotent-Replayed") == "true"
        n = a.json()["position"]
        # a stream's retry gets the non-streamed answer
        h3 = {"Idempotency-Key": "gen-1"}
        g = {"max_tokens": 8, "seed": 3, "stream": True, "logprobs": True, "ignore_eos": True}
        r = c.post(f"/v1/sessions/{sid}/generate", g, headers=h3, stream=True)
        events = [json.loads(l[5:]) for l in r.iter_lines(decode_unicode=True) if l.startswith("data:")]
        done = [e for e in events if e.get("type") == "done"][0]
        b = c.post(f"/v1/sessions/{sid}/generate", g, headers=h3)
        assert b.headers["Content-Type"].startswith("application/json")
        assert b.json()["position"] == done["position"] == c.info(sid)["position"]
        # every token's details, as the stream sent them one by one
        rows = [e["token"] for e in events if e.get("type") == "token"]
        assert len(b.json()["logprobs"]) == len(rows) == 8
        assert [x["logprob"] for x in b.json()["logprobs"]] == [x["logprob"] for x in rows]
        n = done["position"]
        # expected_position
        r = c.post(f"/v1/sessions/{sid}/append", {"text": "x", "expected_position": n + 5})
        e = error_of(r, 409, "position_mismatch")
        assert e["position"] == n and r.headers["X-Recurd-Position"] == str(n)
        r = c.post(f"/v1/sessions/{sid}/append?expected_position={n + 1}", data=b"x",
                   headers={"Content-Type": "text/plain"})
        assert error_of(r, 409, "position_mismatch")["position"] == n
        assert c.ok(c.post(f"/v1/sessions/{sid}/append",
                           {"text": "x", "expected_position": n}))["position"] > n
        # keys are 1-200 visible ASCII characters
        r = c.post(f"/v1/sessions/{sid}/append", {"text": "x"},
                   headers={"Idempotency-Key": "k" * 201})
        error_of(r, 400, "invalid_request")
    finally:
        r1.stop(signal.SIGKILL)


def test_store_down_nothing_acknowledged_then_back_nothing_lost(models, redis):
    r1 = replica(models["a"], redis, "r1", "--store-timeout-ms", "300")
    try:
        c = Client(r1)
        sid = c.session(TEXTS[0])
        pos = c.info(sid)["position"]
        redis.stop()
        r = c.post(f"/v1/sessions/{sid}/append", {"text": TEXTS[1]})
        error_of(r, 503, "unavailable")
        assert r.headers.get("Retry-After")
        r = c.post("/v1/sessions", {})
        error_of(r, 503, "unavailable")
        redis.start()  # the same directory: the AOF has every acknowledged write
        r = retry(lambda: c.post(f"/v1/sessions/{sid}/append", {"text": TEXTS[1]}))
        body = c.ok(r)
        assert body["position"] == pos + body["n_tokens"]  # the refused append was not applied
        assert c.info(sid)["position"] == body["position"]
        assert r1.alive()
    finally:
        r1.stop(signal.SIGKILL)


def test_damaged_or_foreign_store_data_is_refused(models, redis):
    r1 = replica(models["a"], redis, "r1")
    c = Client(r1)
    fp = fp_of(c)
    sid = c.session(TEXTS[0])
    c.append(sid, TEXTS[1])
    assert r1.stop() == 0  # the drain hands it off: a snapshot, no lease
    snap = redis.hget(key(fp, sid, "meta"), "snap")
    assert snap and redis.lrange(key(fp, sid, "log")) == []
    r2 = replica(models["a"], redis, "r2")
    try:
        c2 = Client(r2)
        assert c2.info(sid)["position"] > 0  # loads
        r2.stop()
        # one flipped byte inside the state: the checksum says so
        redis.cmd("SETRANGE", snap, 200, "\x7f")
        r3 = replica(models["a"], redis, "r3")
        c3 = Client(r3)
        r = c3.get(f"/v1/sessions/{sid}")
        assert "checksum" in error_of(r, 422, "invalid_snapshot")["message"]
        r3.stop()
        # an intact snapshot of another model under this session's name
        other = Server(models["b"])
        cb = Client(other)
        sb = cb.session(TEXTS[0])
        blob = cb.state(sb)
        other.stop()
        subprocess.run(["redis-cli", "-p", str(redis.port), "-x", "SET", snap], input=blob,
                       capture_output=True, check=True)
        r4 = replica(models["a"], redis, "r4")
        c4 = Client(r4)
        r = c4.post(f"/v1/sessions/{sid}/append", {"text": "x"})
        assert "another model" in error_of(r, 422, "invalid_snapshot")["message"]
        assert r4.wait_log("restoring session")  # the log line may trail the answer
        r4.stop()
    finally:
        r2.stop(signal.SIGKILL)


def test_a_replica_paused_past_its_lease_cannot_commit(models, redis):
    r1 = replica(models["a"], redis, "r1")
    r2 = replica(models["a"], redis, "r2")
    try:
        c1, c2 = Client(r1), Client(r2)
        fp = fp_of(c1)
        sid = c1.session(TEXTS[0])
        pos = c1.info(sid)["position"]
        # an upload in flight on r1 when it stops
        gate = threading.Event()

        def body():
            yield TEXTS[1].encode()
            gate.wait(20)
            yield TEXTS[2].encode()

        out = {}

        def upload():
            out["r"] = c1.req("POST", f"/v1/sessions/{sid}/append", data=body(),
                              headers={"Content-Type": "text/plain"})

        t = threading.Thread(target=upload)
        t.start()
        time.sleep(0.5)
        r1.p.send_signal(signal.SIGSTOP)
        time.sleep(1.5)  # past --lease-ms 900
        r = retry(lambda: c2.post(f"/v1/sessions/{sid}/append", {"text": TEXTS[3]}))
        taken = c2.ok(r)
        assert taken["position"] == pos + taken["n_tokens"]  # nothing of the paused upload
        r1.p.send_signal(signal.SIGCONT)
        gate.set()
        t.join(30)
        assert out["r"].status_code == 503, out["r"].text  # refused, not acknowledged
        assert int(redis.hget(key(fp, sid, "meta"), "fenced")) >= 1
        assert c2.info(sid)["position"] == taken["position"]
        audit = redis.lrange(key(fp, sid, "audit"))
        assert [l.split()[1] for l in audit] == ["r1", "r2"], audit
    finally:
        r1.p.send_signal(signal.SIGCONT)
        r1.stop(signal.SIGKILL)
        r2.stop(signal.SIGKILL)


def test_drain_hands_sessions_off_at_once(models, redis):
    r1 = replica(models["a"], redis, "r1", "--lease-ms", "60000")
    r2 = replica(models["a"], redis, "r2", "--lease-ms", "60000")
    try:
        c1, c2 = Client(r1), Client(r2)
        fp = fp_of(c1)
        sids = [c1.session(t) for t in TEXTS]
        pos = {s: c1.info(s)["position"] for s in sids}
        assert r1.stop() == 0
        t0 = time.time()
        for s in sids:
            assert c2.info(s)["position"] == pos[s]  # no lease to wait out (60 s)
            assert redis.hget(key(fp, s, "meta"), "snap_pos") == str(pos[s])
        assert time.time() - t0 < 5
        listed = {x["id"] for x in c2.ok(c2.get("/v1/sessions"))["data"]}
        assert set(sids) <= listed
        # a delete is a delete everywhere
        assert c2.ok(c2.req("DELETE", f"/v1/sessions/{sids[0]}"))
        r3 = replica(models["a"], redis, "r3")
        error_of(Client(r3).get(f"/v1/sessions/{sids[0]}"), 404, "not_found")
        r3.stop(signal.SIGKILL)
    finally:
        r1.stop(signal.SIGKILL)
        r2.stop(signal.SIGKILL)


def test_idle_sessions_expire_from_the_store_too(models, redis):
    """--session-ttl: an idle session leaves the replica (handed off) and its
    keys expire in Redis, so the store does not grow without bound."""
    r1 = replica(models["a"], redis, "r1", "--session-ttl", "1")
    try:
        c = Client(r1)
        fp = fp_of(c)
        sid = c.session(TEXTS[0])
        assert redis.cmd("EXISTS", key(fp, sid, "meta")).strip() == "(integer) 1"
        end = time.time() + 20  # out of the replica after 1 s, of the store 2 s after that
        while time.time() < end and redis.cmd("EXISTS", key(fp, sid, "meta")).strip() != "(integer) 0":
            time.sleep(0.2)
        assert redis.cmd("EXISTS", key(fp, sid, "meta")).strip() == "(integer) 0"
        error_of(c.get(f"/v1/sessions/{sid}"), 404, "not_found")
        assert c.ok(c.get("/v1/sessions"))["data"] == []
        # nothing left (KEYS skips keys past their expiry; DBSIZE counts them
        # until Redis's expiry cycle has collected them): listing cleaned the
        # owner's set
        assert redis.cmd("KEYS", "*").strip() in ("", "(empty array)", "(empty list or set)")
    finally:
        r1.stop(signal.SIGKILL)


def test_an_upload_cut_off_applies_nothing(models, redis):
    """A text/plain append whose client goes away part-way was never
    acknowledged: with a store nothing of it stays (a retry of the whole
    text under the same key must not read its first part twice)."""
    r1 = replica(models["a"], redis, "r1")
    try:
        c = Client(r1)
        sid = c.session(TEXTS[0])
        pos = c.info(sid)["position"]
        s = socket.create_connection(("127.0.0.1", r1.port))
        s.sendall(f"POST /v1/sessions/{sid}/append HTTP/1.1\r\nHost: x\r\n"
                  "Content-Type: text/plain\r\nIdempotency-Key: up-1\r\n"
                  "Transfer-Encoding: chunked\r\n\r\n".encode())
        part = (TEXTS[1] * 40).encode()
        s.sendall(b"%x\r\n%s\r\n" % (len(part), part))
        time.sleep(0.5)  # read and scored by now
        s.close()
        end = time.time() + 10
        while time.time() < end and c.info(sid)["position"] != pos:
            time.sleep(0.1)
        assert c.info(sid)["position"] == pos
        whole = (TEXTS[1] * 40 + TEXTS[2]).encode()
        end = time.time() + 30
        while True:  # the cut-off upload's job may still be ending (slow builds)
            r = c.post(f"/v1/sessions/{sid}/append", data=whole,
                       headers={"Content-Type": "text/plain", "Idempotency-Key": "up-1"})
            if r.status_code != 409 or time.time() > end:
                break
            time.sleep(0.05)
        body = c.ok(r)
        assert body["position"] == pos + body["n_tokens"]
    finally:
        r1.stop(signal.SIGKILL)


def test_the_store_is_the_spill_tier(models, redis):
    """--state-memory bounds only the sessions in memory: beyond it idle
    sessions leave for the store (no 503 for a new one while an idle one
    can go), and each comes back, whole, when asked for."""
    probe = Server(models["a"])
    size = Client(probe).ok(Client(probe).get("/v1/models"))["data"][0]["state_bytes"]
    probe.stop()
    r1 = replica(models["a"], redis, "r1", "--state-memory", str(3 * size))
    try:
        c = Client(r1)
        want, errors = {}, []

        def one(i):
            cc = Client(r1)
            for k in range(4):
                r = cc.post("/v1/sessions", {})
                if r.status_code != 201:  # never "budget spent"
                    errors.append(r.text)
                    return
                sid = r.json()["id"]
                want[sid] = cc.append(sid, TEXTS[(i + k) % 4] * (i + 1))["position"]

        # three clients, a budget of three states: a new session fits only
        # when an idle one leaves (each client's previous session is idle)
        th = [threading.Thread(target=one, args=(i,)) for i in range(3)]
        for t in th:
            t.start()
        for t in th:
            t.join(60)
        assert not errors, errors
        assert len(want) == 12
        for sid, pos in want.items():
            assert c.info(sid)["position"] == pos
        m = c.get("/metrics").text
        held = [l for l in m.splitlines() if l.startswith("recurd_state_bytes ")][0]
        assert int(held.split()[1]) <= 4 * size, held  # the budget, plus one on its way out
        moved = [l for l in m.splitlines() if 'handoffs_total{reason="memory"}' in l][0]
        assert int(moved.split()[1]) >= 9, moved
    finally:
        r1.stop(signal.SIGKILL)
