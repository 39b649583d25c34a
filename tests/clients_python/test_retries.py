"""The client's retries (docs/cluster.md): appends and generates carry an
Idempotency-Key, kept across the retries of one call and fresh for the next,
and are sent again through 503 (Retry-After), connections refused or cut
off and proxies' 502, until the Client's retry_deadline. A streamed
generate cut off mid-stream continues from a JSON replay or a re-run as one
unbroken stream. Against a scripted fake server, and against the real one
(a server started after the client)."""
import http.server
import json
import socket
import threading
import time

import pytest

import recur_client
from recur_client import Client, split_text
from conftest import TEXT, Server, stop

SID = "0123456789abcdef0123456789abcdef"


class Script(http.server.BaseHTTPRequestHandler):
    """Answers each request with the next step of the server's script for
    its path: ("503", secs) / ("drop",) / ("502",) / ("json", obj) /
    ("sse", [events], cut) — cut: close after the events, no end."""
    protocol_version = "HTTP/1.1"

    def log_message(self, *a):
        pass

    def do_POST(self):
        srv = self.server
        if self.headers.get("Transfer-Encoding") == "chunked":
            body = b""
            while True:
                n = int(self.rfile.readline().strip(), 16)
                if n == 0:
                    self.rfile.readline()
                    break
                body += self.rfile.read(n)
                self.rfile.readline()
        else:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        with srv.lock:
            srv.seen.append((self.path, self.headers.get("Idempotency-Key"), body))
            steps = srv.script.get(self.path.split("?")[0], [])
            step = steps.pop(0) if len(steps) > 1 else steps[0]
        kind = step[0]
        if kind == "drop":
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        if kind in ("503", "502"):
            b = b'{"error":{"message":"not now","type":"server_error","code":"unavailable"}}' \
                if kind == "503" else b"<html>502 Bad Gateway</html>"
            self.send_response(int(kind))
            if kind == "503":
                self.send_header("Retry-After", str(step[1]))
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(b)))
            self.end_headers()
            self.wfile.write(b)
            return
        if kind == "json":
            b = json.dumps(step[1]).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("X-Recurd-Replica", "r2")
            if len(srv.seen) > 1:
                self.send_header("Idempotent-Replayed", "true")
            self.send_header("Content-Length", str(len(b)))
            self.end_headers()
            self.wfile.write(b)
            return
        events, cut = step[1], step[2]
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("X-Recurd-Replica", "r1")
        self.send_header("Connection", "close")
        self.end_headers()
        for ev in events:
            self.wfile.write(b"data: " + json.dumps(ev).encode() + b"\n\n")
        self.wfile.flush()
        self.close_connection = True
        if cut:
            self.connection.shutdown(socket.SHUT_RDWR)


@pytest.fixture
def fake():
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Script)
    srv.lock = threading.Lock()
    srv.seen = []
    srv.script = {}
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    srv.url = "http://127.0.0.1:%d" % srv.server_address[1]
    yield srv
    srv.shutdown()
    srv.server_close()
    t.join(5)


SCORE = {"position": 7, "n_tokens": 7, "n_scored": 6, "nll": 1.0, "nll_sum": 6.0, "ppl": 2.7,
         "buckets": []}


def test_append_retries_with_one_key(fake):
    path = "/v1/sessions/%s/append" % SID
    fake.script[path] = [("503", 0.05), ("drop",), ("502",), ("json", SCORE)]
    retries = []
    c = Client(fake.url, timeout=5, retry_deadline=10, on_retry=retries.append)
    r = c.append(SID, "It was", expected_position=0)
    assert r.position == 7 and r.attempts == 4 and r.replayed and r.replica == "r2"
    keys = {k for _, k, _ in fake.seen}
    assert len(keys) == 1 and None not in keys  # one key for the four attempts
    assert all(json.loads(b) == {"text": "It was", "expected_position": 0}
               for _, _, b in fake.seen)
    assert [i.attempt for i in retries] == [1, 2, 3]
    assert retries[0].delay == pytest.approx(0.05)  # Retry-After honoured
    assert isinstance(retries[1].error, recur_client.ConnectionError)
    c.append(SID, "again")
    assert fake.seen[-1][1] not in keys  # the next call: a fresh key


def test_text_plain_upload_is_sent_again_whole(fake, tmp_path):
    path = "/v1/sessions/%s/append" % SID
    fake.script[path] = [("drop",), ("503", 0), ("json", SCORE)]
    c = Client(fake.url, timeout=5, retry_deadline=10)
    one_pass = (p for p in [b"first ", "second ", b"third"])  # an iterable read once
    r = c.append_stream(SID, one_pass)
    assert r.attempts == 3
    assert [b for _, _, b in fake.seen] == [b"first second third"] * 3
    assert len({k for _, k, _ in fake.seen}) == 1
    f = tmp_path / "book.txt"
    f.write_bytes(b"x" * 200000)
    fake.seen.clear()
    fake.script[path] = [("drop",), ("json", SCORE)]
    sent = []
    c.append_file(SID, str(f), chunk_size=4096, progress=lambda s, t: sent.append(s))
    assert [len(b) for _, _, b in fake.seen] == [200000, 200000]  # the file read again
    assert sent == sorted(sent) and sent[-1] == 200000  # progress never goes back


def test_deadline_and_what_is_not_retried(fake):
    path = "/v1/sessions/%s/append" % SID
    fake.script[path] = [("503", 0.2)]
    c = Client(fake.url, timeout=5, retry_deadline=1)
    t = time.monotonic()
    with pytest.raises(recur_client.ServerUnavailable):
        c.append(SID, "x")
    assert 0.9 < time.monotonic() - t < 3 and len(fake.seen) >= 4
    fake.seen.clear()
    with pytest.raises(recur_client.ServerUnavailable):
        Client(fake.url, timeout=5, retry_deadline=0).append(SID, "x")
    assert len(fake.seen) == 1  # retries off


def test_stream_cut_then_replayed_as_json(fake):
    path = "/v1/sessions/%s/generate" % SID
    toks = [{"type": "token", "token": {"id": 65 + i, "position": 10 + i, "logprob": -1.0 - i},
             "text": chr(65 + i), "position": 10 + i} for i in range(5)]
    stored = {"tokens": [65, 66, 67, 68, 69], "text": "ABCDE", "finish_reason": "length",
              "position": 15, "n_tokens": 5, "seed": 9, "committed": True,
              "logprobs": [t["token"] for t in toks]}
    fake.script[path] = [("sse", toks[:2], True), ("json", stored)]
    c = Client(fake.url, timeout=5, retry_deadline=10)
    st = c.generate_stream(SID, max_tokens=5, logprobs=True)
    evs = list(st)
    assert [e.id for e in evs[:-1]] == [65, 66, 67, 68, 69]
    assert isinstance(evs[-1], recur_client.DoneEvent) and evs[-1].position == 15
    assert st.text == "ABCDE" and st.attempts == 2 and st.replayed
    assert [t.logprob for t in st.logprobs] == [-1.0, -2.0, -3.0, -4.0, -5.0]
    seeds = {json.loads(b)["seed"] for _, _, b in fake.seen}
    assert len(seeds) == 1 and len({k for _, k, _ in fake.seen}) == 1  # same seed, same key


def test_stream_cut_then_run_again(fake):
    path = "/v1/sessions/%s/generate" % SID
    toks = [{"type": "token", "token": {"id": 65 + i, "position": 10 + i}, "text": chr(65 + i),
             "position": 10 + i} for i in range(4)]
    done = {"type": "done", "finish_reason": "length", "n_tokens": 4, "position": 14,
            "seed": 3, "committed": True}
    fake.script[path] = [("sse", toks[:3], True), ("503", 0), ("sse", toks + [done], False)]
    c = Client(fake.url, timeout=5, retry_deadline=10)
    r = c.generate_stream(SID, max_tokens=4, seed=3).result()
    assert r.tokens == [65, 66, 67, 68] and r.text == "ABCD" and r.attempts == 3
    # a re-run that gives other tokens than were streamed is an error, not a splice
    fake.script[path] = [("sse", toks[:2], True),
                         ("sse", [toks[0], toks[2], toks[3], done], False)]
    with pytest.raises(recur_client.ProtocolError):
        c.generate_stream(SID, max_tokens=4, seed=3).result()


def test_split_text():
    t = "It was the best of times, it was the worst of times. " * 40 + "é€😀" * 300
    for n in (4, 7, 64, 1000):
        ps = split_text(t, n)
        assert "".join(ps) == t and all(len(p.encode()) <= n for p in ps)
    ps = split_text("abc defgh ijk lmnop", 12)
    assert ps == ["abc defgh", " ijk lmnop"]  # before a space that precedes a letter
    with pytest.raises(ValueError):
        split_text("abc", 3)


def free_port():
    with socket.socket() as so:
        so.bind(("127.0.0.1", 0))
        return so.getsockname()[1]


def test_client_started_before_the_server(models):
    """Connection refused until the server listens, then 503 while it loads:
    the append goes through once, with its expected position."""
    port = free_port()
    c = Client("http://127.0.0.1:%d" % port, timeout=10, retry_deadline=60)
    out = {}

    def later():
        time.sleep(1.0)
        out["srv"] = Server(models["a"], "--port", str(port), "--quiet")

    t = threading.Thread(target=later)
    t.start()
    try:
        # a session needs the server: the append's retries are what is tested
        end = time.monotonic() + 30
        while True:
            try:
                s = Client("http://127.0.0.1:%d" % port, retry_deadline=0).create_session()
                break
            except (recur_client.ConnectionError, recur_client.ServerUnavailable):
                assert time.monotonic() < end
                time.sleep(0.05)
        r = c.append(s, TEXT, expected_position=0)
        assert r.position == r.n_tokens == c.get_session(s).position
        with pytest.raises(recur_client.PositionMismatch) as e:
            c.append(s, TEXT, expected_position=0)
        assert e.value.position == r.position and e.value.status == 409
        book = c.append_book(s, TEXT * 40, chunk_bytes=256)
        assert c.get_session(s).position == r.position + book.n_tokens
    finally:
        t.join()
        if "srv" in out:
            stop(out["srv"])


def test_append_refused_then_served(models):
    port = free_port()
    c = Client("http://127.0.0.1:%d" % port, timeout=10, retry_deadline=60)
    srv = Server(models["a"], "--port", str(port), "--quiet")
    try:
        s = c.create_session()
    finally:
        stop(srv)
    # the server is gone (and its sessions with it): the append waits for
    # the next one and then gets its honest 404
    out = {}

    def later():
        time.sleep(1.0)
        out["srv"] = Server(models["a"], "--port", str(port), "--quiet")

    t = threading.Thread(target=later)
    t.start()
    retries = []
    c.on_retry = retries.append
    try:
        with pytest.raises(recur_client.NotFound):
            c.append(s, TEXT)
        assert retries and all(isinstance(i.error, recur_client.ConnectionError) or
                               i.error.status == 503 for i in retries)
    finally:
        t.join()
        if "srv" in out:
            stop(out["srv"])
