"""Error mapping: every server error type has its exception class; real
404, 400, 401, 409, 422, 429, 501 and 503 answers, a server that is down,
one that never answers, and answers that are not recurd's."""
import http.server
import io
import os
import re
import socket
import threading

import pytest

import recur_client
from recur_client import Client, errors
from conftest import ROOT, TEXT, Server, stop


def doc_error_table():
    """(status, type) rows of docs/server.md's error table."""
    with open(os.path.join(ROOT, "docs", "server.md"), encoding="utf-8") as f:
        doc = f.read()
    rows = re.findall(r"^\| (\d{3}) \| `([a-z_]+)` \|", doc, re.M)
    assert len(rows) >= 15, "docs/server.md's error table not found"
    return [(int(s), t) for s, t in rows]


def openapi_error_codes():
    """The spec's error codes (ApiError.code's enum)."""
    import yaml
    with open(os.path.join(ROOT, "proto", "openapi.yaml"), encoding="utf-8") as f:
        spec = yaml.safe_load(f)
    return spec["components"]["schemas"]["ApiError"]["properties"]["code"]["enum"]


def test_every_documented_error_code_has_a_class():
    rows = doc_error_table()
    assert sorted(t for _, t in rows) == sorted(openapi_error_codes())
    for status, code in rows:
        cls = errors.error_class(status, code)
        assert cls is errors.BY_CODE[code], code
        assert cls is not recur_client.RecurError
        # the class for the code is the status's class or a subclass of it
        assert issubclass(cls, errors.BY_STATUS[status]), (status, code)
        e = errors.from_error_object({"message": "m", "type": "invalid_request_error",
                                      "param": "f", "code": code}, status=status)
        assert isinstance(e, cls) and e.status == status and e.code == code
        assert e.type == "invalid_request_error" and e.param == "f"
        assert str(e) == "%d %s: m" % (status, code)
        # a server from before the OpenAI shape: {"type": name, "code": status}
        old = errors.from_error_object({"type": code, "message": "m", "code": status})
        assert isinstance(old, cls) and old.status == status and old.code == code


def test_error_hierarchy():
    assert issubclass(recur_client.InvalidToken, recur_client.BadRequest)
    assert issubclass(recur_client.SessionBusy, recur_client.Conflict)
    assert issubclass(recur_client.TooManyRequests, recur_client.Overloaded)
    assert issubclass(recur_client.ServerUnavailable, recur_client.Overloaded)
    assert issubclass(recur_client.ConnectionError, ConnectionError)
    assert issubclass(recur_client.Timeout, TimeoutError)
    for name in recur_client.__all__:
        obj = getattr(recur_client, name)
        if isinstance(obj, type) and issubclass(obj, BaseException):
            assert issubclass(obj, recur_client.RecurError), name
    # unknown code: by status; unknown status: the base class
    assert type(errors.from_error_object({"code": "new_kind"}, status=404)) is \
        recur_client.NotFound
    assert type(errors.from_error_object({"type": "new_kind", "code": 404})) is \
        recur_client.NotFound
    e = errors.from_error_object({"message": "?"}, status=418)
    assert type(e) is recur_client.RecurError and e.status == 418


def test_not_found(client):
    ghost = "0" * 32
    calls = [
        lambda: client.get_session(ghost),
        lambda: client.delete_session(ghost),
        lambda: client.append(ghost, TEXT),
        lambda: client.generate(ghost, max_tokens=1),
        lambda: client.generate_stream(ghost, max_tokens=1),
        lambda: client.get_state(ghost),
        lambda: client.fork(ghost),
        lambda: client.get_snapshot("no-such-snapshot"),
        lambda: client.delete_snapshot("no-such-snapshot"),
        lambda: client.get_session("../../v1/models"),  # quoted: one path segment
    ]
    for call in calls:
        with pytest.raises(recur_client.NotFound) as e:
            call()
        assert e.value.status == 404 and e.value.code == "not_found" and e.value.message
    s = client.create_session()
    client.delete_session(s)
    with pytest.raises(recur_client.NotFound):
        client.delete_session(s)


def test_not_found_during_a_large_upload(client):
    """The server refuses a streamed append to an unknown session before
    reading the body; the client reports that answer, not a broken pipe."""
    body = io.BytesIO(b"x" * (8 << 20))
    with pytest.raises(recur_client.NotFound):
        client.append_file("0" * 32, body)


def test_bad_request(client):
    s = client.create_session()
    with pytest.raises(recur_client.BadRequest) as e:
        client.generate(s, max_tokens=2)  # nothing read yet
    assert e.value.code == "invalid_request" and "append" in e.value.message
    client.append(s, TEXT)
    with pytest.raises(recur_client.InvalidToken) as e:
        client.append(s, [65, 256])
    assert e.value.status == 400 and "tokens[1]" in e.value.message
    with pytest.raises(recur_client.BadRequest) as e:
        client.generate(s, max_tokens=2, temperature=-1)
    assert type(e.value) is recur_client.BadRequest and "temperature" in e.value.message
    with pytest.raises(recur_client.BadRequest):
        client.generate_stream(s, max_tokens=0)
    with pytest.raises(recur_client.BadRequest):
        client.append(s, TEXT, logprobs=True, top_logprobs=10 ** 6)
    with pytest.raises(recur_client.BadRequest):
        client.append_file(s, io.BytesIO(b"abc"), logprobs=True, top_logprobs=-1)
    with pytest.raises(recur_client.BadRequest):
        client.completions("x", n=1000)  # over --max-n
    # the session is unharmed
    assert client.get_session(s).position == len(TEXT.encode())


@pytest.mark.parametrize("retry", [0, 30])
def test_session_busy(srv, retry):
    client = Client(srv.base, timeout=60, retry_deadline=retry)
    s = client.create_session()
    client.append(s, TEXT)
    with client.generate_stream(s, max_tokens=100000) as st:
        next(st)
        with pytest.raises(recur_client.SessionBusy) as e:
            client.append(s, "x")  # the first attempt: not retried
        assert e.value.status == 409 and isinstance(e.value, recur_client.Conflict)
        assert client.get_session(s).busy
        # deleting it cancels the stream: the error event is raised; a client
        # that retries (the event says unavailable) sends it again and learns
        # that the session is gone
        client.delete_session(s)
        with pytest.raises(recur_client.RecurError) as e:
            for _ in st:
                pass
        if retry:
            assert isinstance(e.value, recur_client.NotFound) and st.attempts == 2
        else:
            assert e.value.code == "unavailable" and "cancel" in e.value.message


def test_invalid_snapshots(client):
    s = client.create_session()
    client.append(s, TEXT)
    snap = bytearray(client.get_state(s))
    snap[len(snap) // 2] ^= 0x40
    with pytest.raises(recur_client.InvalidSnapshot) as e:
        client.restore(bytes(snap))
    assert e.value.status == 422 and e.value.code == "invalid_snapshot"
    other = client.create_session()
    client.append(other, "unchanged")
    before = client.get_state(other)
    with pytest.raises(recur_client.InvalidSnapshot):
        client.put_state(other, bytes(snap))
    with pytest.raises(recur_client.RecurError) as e:
        client.put_state(other, bytes(snap[:-1]))  # wrong size: refused before reading
    assert e.value.status in (413, 422)
    assert client.get_state(other) == before


@pytest.fixture(scope="module")
def keyed(models):
    """Model b, two API keys, a small per-key session cap, no --snapshot-dir."""
    s = Server(models["b"], "--api-key", "key-one,key-two", "--max-sessions-per-key", "3",
               "--quiet")
    yield s
    stop(s)


def test_unauthorized_and_keys(keyed, monkeypatch):
    monkeypatch.delenv("RECURD_API_KEY", raising=False)
    anon = Client(keyed.base)
    assert anon.health() == "ok"  # public
    for call in (anon.list_sessions, anon.model, anon.create_session,
                 lambda: anon.append_file("0" * 32, io.BytesIO(b"abc" * 100000)),
                 lambda: anon.generate_stream("0" * 32)):
        with pytest.raises(recur_client.Unauthorized) as e:
            call()
        assert e.value.status == 401 and e.value.code == "invalid_api_key" and e.value.type == "authentication_error"
    with pytest.raises(recur_client.Unauthorized):
        Client(keyed.base, api_key="key-three").list_sessions()
    one = Client(keyed.base, api_key="key-one")
    s = one.create_session()
    assert [x.id for x in one.list_sessions()] == [s.id]
    monkeypatch.setenv("RECURD_API_KEY", "key-two")
    two = Client(keyed.base)  # the key from the environment
    assert two.api_key == "key-two" and two.list_sessions() == []
    with pytest.raises(recur_client.NotFound):
        two.get_session(s)  # another key's session is not there
    one.delete_session(s)


def test_too_many_sessions_and_not_enabled(keyed, client):
    one = Client(keyed.base, api_key="key-one")
    made = [one.create_session() for _ in range(3)]
    with pytest.raises(recur_client.TooManyRequests) as e:
        one.create_session()
    assert e.value.status == 429 and isinstance(e.value, recur_client.Overloaded)
    for s in made:
        one.delete_session(s)
    with pytest.raises(recur_client.NotEnabled) as e:
        one.list_snapshots()
    assert e.value.status == 501
    # a snapshot of model a into model b's server
    a = client.create_session()
    client.append(a, TEXT)
    with pytest.raises(recur_client.SnapshotModelMismatch) as e:
        one.restore(client.get_state(a))
    assert e.value.status == 409 and isinstance(e.value, recur_client.Conflict)


def test_server_unavailable_retry_after(models):
    s = Server(models["a"], "--max-sessions", "1", "--quiet")
    try:
        c = Client(s.base)
        c.create_session()
        with pytest.raises(recur_client.ServerUnavailable) as e:
            c.create_session()
        assert e.value.status == 503 and e.value.retry_after is not None
        assert e.value.retry_after > 0 and isinstance(e.value, recur_client.Overloaded)
    finally:
        stop(s)
    # now nothing listens there
    with pytest.raises(recur_client.ConnectionError):
        c.health()


def free_port():
    with socket.socket() as so:
        so.bind(("127.0.0.1", 0))
        return so.getsockname()[1]


def test_server_down():
    # retry_deadline=0: the error at once (retries: test_retries.py)
    c = Client("http://127.0.0.1:%d" % free_port(), timeout=5, retry_deadline=0)
    for call in (c.health, c.list_sessions, lambda: c.append("a" * 32, "x"),
                 lambda: c.append_file("a" * 32, io.BytesIO(b"x" * 100000)),
                 lambda: c.generate_stream("a" * 32), c.wait_ready):
        with pytest.raises(recur_client.ConnectionError) as e:
            if call == c.wait_ready:
                c.wait_ready(timeout=0.3)
            else:
                call()
        assert e.value.status is None and isinstance(e.value, ConnectionError)
        assert isinstance(e.value, recur_client.RecurError)


def test_timeout():
    """A server that accepts connections and never answers."""
    with socket.socket() as ls:
        ls.bind(("127.0.0.1", 0))
        ls.listen(4)
        c = Client("http://127.0.0.1:%d" % ls.getsockname()[1], timeout=0.3)
        with pytest.raises(recur_client.Timeout) as e:
            c.health()
        assert isinstance(e.value, TimeoutError) and e.value.status is None


class Fake(http.server.BaseHTTPRequestHandler):
    """Answers that are not recurd's, by path."""
    protocol_version = "HTTP/1.1"

    def log_message(self, *a):
        pass

    def send(self, status, ctype, body, extra=()):
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in extra:
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        if self.path == "/v1/models":
            self.send(200, "application/json", b"<html>not json</html>")
        elif self.path == "/v1/sessions":
            self.send(503, "text/html", b"<h1>proxy says no</h1>", [("Retry-After", "7")])
        elif self.path == "/health":
            self.send(418, "text/plain", b"")
        else:
            self.send(431, "text/html", b"Request Header Fields Too Large")

    def do_POST(self):
        n = int(self.headers.get("Content-Length", "0"))
        self.rfile.read(n)
        events = {
            "/v1/sessions/cut/generate":
                b'data: {"type":"token","token":{"id":65},"text":"A","position":1}\n\n',
            "/v1/sessions/bad/generate": b"data: {not json\n\n",
            "/v1/sessions/err/generate":
                b'data: {"type":"token","token":{"id":65},"text":"A","position":1}\n\n'
                b'data: {"type":"error","error":{"type":"internal_error",'
                b'"message":"boom","code":500}}\n\n',
            "/v1/sessions/plain/generate": None,
        }
        if self.path not in events:
            self.send(404, "application/json",
                      b'{"error":{"type":"not_found","message":"nope","code":404}}')
            return
        body = events[self.path]
        if body is None:
            self.send(200, "application/json", b"{}")
            return
        self.send(200, "text/event-stream", body)


@pytest.fixture
def fake():
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Fake)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield Client("http://127.0.0.1:%d" % srv.server_address[1], timeout=5, retry_deadline=0)
    srv.shutdown()
    srv.server_close()
    t.join(5)


def test_answers_that_are_not_recurds(fake):
    with pytest.raises(recur_client.ProtocolError):
        fake.model()
    with pytest.raises(recur_client.ServerUnavailable) as e:
        fake.list_sessions()
    assert e.value.retry_after == 7 and e.value.code is None and "proxy" in e.value.message
    with pytest.raises(recur_client.RecurError) as e:
        fake.health()
    assert e.value.status == 418
    with pytest.raises(recur_client.RecurError) as e:
        fake.get_session("x")
    assert e.value.status == 431 and "Too Large" in e.value.message
    st = fake.generate_stream("cut")
    assert next(st).text == "A"
    with pytest.raises(recur_client.ConnectionError):
        next(st)  # ended without a done event
    with pytest.raises(recur_client.ProtocolError):
        fake.generate_stream("bad").result()
    st = fake.generate_stream("err")
    with pytest.raises(recur_client.InternalServerError) as e:
        st.result()
    assert e.value.message == "boom" and st.tokens == [65]
    with pytest.raises(recur_client.ProtocolError):
        fake.generate_stream("plain")
    with pytest.raises(recur_client.NotFound):
        fake.generate_stream("other")
