"""Black-box harness: start the real recurd binary on a free loopback port
with a tiny generated model, talk HTTP to it, stop it.

RECURD_BIN names the binary (CTest sets it); otherwise build/server/recurd
under the repository root is used. Every wait is bounded.
"""
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time

import pytest
import requests

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
BIN = os.environ.get("RECURD_BIN", os.path.join(ROOT, "build", "server", "recurd"))
PY = sys.executable


def make_model(out, seed=1, **kw):
    args = [PY, os.path.join(HERE, "make_model.py"), out, "--seed", str(seed)]
    for k, v in kw.items():
        args += ["--" + k.replace("_", "-")] + ([] if v is True else [str(v)])
    subprocess.run(args, check=True)
    return out


class Server:
    """One recurd process. Stderr is collected line by line."""

    def __init__(self, model, *args, env=None, wait_ready=True, timeout=20):
        if not os.path.exists(BIN):
            pytest.skip(f"recurd binary not found at {BIN} (set RECURD_BIN)")
        e = dict(os.environ)
        e.pop("RECURD_API_KEY", None)
        # The machine running the tests is shared and loaded: one thread
        # per library keeps a tiny model's per-tick latency low and steady.
        e.setdefault("OMP_NUM_THREADS", "1")
        e.setdefault("OPENBLAS_NUM_THREADS", "1")
        e.update(env or {})
        self.cmd = [BIN, "serve", "--model", model, "--host", "127.0.0.1", "--port", "0",
                    *map(str, args)]
        self.p = subprocess.Popen(self.cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                  env=e)
        self.lines = []
        self._port = None
        self._cv = threading.Condition()
        self._t = threading.Thread(target=self._read, daemon=True)
        self._t.start()
        self.port = self._wait_port(timeout)
        self.base = f"http://127.0.0.1:{self.port}" if self.port else None
        if wait_ready and self.port:
            self.wait_health(200, timeout)

    def _read(self):
        for raw in self.p.stderr:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            with self._cv:
                self.lines.append(line)
                m = re.search(r"listening on http://[^:]+:(\d+)", line)
                if m:
                    self._port = int(m.group(1))
                self._cv.notify_all()
        with self._cv:
            self._cv.notify_all()

    def _wait_port(self, timeout):
        end = time.time() + timeout
        with self._cv:
            while self._port is None and self.p.poll() is None and time.time() < end:
                self._cv.wait(0.1)
            return self._port

    def wait_health(self, code, timeout=20):
        end = time.time() + timeout
        last = None
        while time.time() < end:
            try:
                last = requests.get(self.base + "/health", timeout=2).status_code
                if last == code:
                    return
            except requests.RequestException:
                pass
            if self.p.poll() is not None:
                raise AssertionError("server exited: " + "\n".join(self.lines[-5:]))
            time.sleep(0.05)
        raise AssertionError(f"/health never answered {code} (last {last})")

    def url(self, path):
        return self.base + path

    def log(self):
        with self._cv:
            return list(self.lines)

    def wait_log(self, pattern, timeout=10):
        end = time.time() + timeout
        rx = re.compile(pattern)
        with self._cv:
            while time.time() < end:
                if any(rx.search(l) for l in self.lines):
                    return True
                self._cv.wait(0.1)
        return False

    def alive(self):
        return self.p.poll() is None

    def cpu_seconds(self):
        """User + system CPU time the server has used so far (/proc/PID/stat)."""
        with open(f"/proc/{self.p.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self, sig=signal.SIGTERM, timeout=15):
        if self.p.poll() is None:
            self.p.send_signal(sig)
            try:
                self.p.wait(timeout)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait(5)
                raise AssertionError("server did not exit after the signal")
        self._t.join(5)
        return self.p.returncode


class Client:
    """Thin helpers over requests for one server (and one API key)."""

    def __init__(self, srv, key=None):
        self.s = srv
        self.h = {"Authorization": f"Bearer {key}"} if key else {}
        self.http = requests.Session()

    def req(self, method, path, **kw):
        headers = dict(self.h)
        headers.update(kw.pop("headers", {}))
        kw.setdefault("timeout", 60)
        return self.http.request(method, self.s.url(path), headers=headers, **kw)

    def post(self, path, body=None, **kw):
        if body is not None:
            kw["data"] = json.dumps(body)
            kw.setdefault("headers", {})["Content-Type"] = "application/json"
        return self.req("POST", path, **kw)

    def get(self, path, **kw):
        return self.req("GET", path, **kw)

    def ok(self, r, code=200):
        assert r.status_code == code, f"{r.status_code}: {r.text[:500]}"
        return r.json() if r.headers.get("Content-Type", "").startswith("application/json") else r

    def session(self, text=None):
        sid = self.ok(self.post("/v1/sessions", {}), 201)["id"]
        if text:
            self.append(sid, text)
        return sid

    def append(self, sid, text, **kw):
        return self.ok(self.post(f"/v1/sessions/{sid}/append", {"text": text, **kw}))

    def generate(self, sid, **kw):
        return self.ok(self.post(f"/v1/sessions/{sid}/generate", kw))

    def state(self, sid):
        r = self.get(f"/v1/sessions/{sid}/state")
        assert r.status_code == 200, r.text
        return r.content

    def info(self, sid):
        return self.ok(self.get(f"/v1/sessions/{sid}"))


def sse_events(resp):
    """The data: payloads of an SSE response, as parsed JSON (or the raw
    string for [DONE]), checking every event is valid UTF-8."""
    out = []
    buf = b""
    for chunk in resp.iter_content(chunk_size=None):
        buf += chunk
        while b"\n\n" in buf:
            ev, buf = buf.split(b"\n\n", 1)
            text = ev.decode("utf-8")  # strict: raises on invalid UTF-8
            assert text.startswith("data: "), text
            payload = text[6:]
            out.append(payload if payload == "[DONE]" else json.loads(payload))
    assert buf == b"", f"trailing bytes {buf!r}"
    return out


# OpenAI's category ("type") for each of recurd's error codes (proto/apierr.c).
ERROR_CATEGORY = {
    400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
    405: "invalid_request_error", 408: "invalid_request_error", 409: "invalid_request_error", 413: "invalid_request_error",
    415: "invalid_request_error", 422: "invalid_request_error", 429: "rate_limit_error",
    500: "server_error", 501: "not_supported_error", 503: "server_error", 507: "server_error",
}


def unfinished_stream(srv, sid):
    """A streamed generate on sid that stays open and unfinished: the
    iterator is kept (a dropped requests iterator closes the connection,
    which the server rightly treats as a client gone) and the events are big
    (top-20 log-probs) so that the unread stream cannot finish into socket
    buffers. Returns (response, iterator) after the first chunk."""
    r = requests.post(srv.url(f"/v1/sessions/{sid}/generate"),
                      json={"max_tokens": 100000, "stream": True, "logprobs": True,
                            "top_logprobs": 20}, stream=True, timeout=30)
    it = r.iter_content(chunk_size=None)
    next(it)
    return r, it


def error_of(r, status, code=None):
    """The error object of r, checked: the status, OpenAI's shape
    {"message","type","param","code"}, the category that goes with the
    status, and (if given) recurd's code."""
    assert r.status_code == status, f"want {status}, got {r.status_code}: {r.text[:300]}"
    j = r.json()
    e = j["error"]
    # position_mismatch also says where the session is
    extra = {"position"} if e.get("code") == "position_mismatch" else set()
    assert set(e) == {"message", "type", "param", "code"} | extra, j
    assert isinstance(e["message"], str) and e["message"]
    assert e["type"] == ERROR_CATEGORY[status], e
    # a field name when there is one: never empty, never mangled bytes
    assert e["param"] is None or re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.\[\]-]{0,70}", e["param"]), e
    assert isinstance(e["code"], str), e
    if code:
        assert e["code"] == code, e
    return e


@pytest.fixture(scope="session")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("models")
    return {
        "a": make_model(str(d / "model-a"), seed=1),
        "b": make_model(str(d / "model-b"), seed=2),
    }


@pytest.fixture(scope="module")
def srv(models):
    s = Server(models["a"])
    yield s
    rc = s.stop()
    assert rc == 0, "\n".join(s.log()[-20:])


@pytest.fixture
def c(srv):
    return Client(srv)


CONTROL_TEXT = "The control session reads this sentence and then continues greedily."


class Control:
    """docs/reliability.md's control session: its greedy continuation is fixed
    before a test and must be the same after it."""

    def __init__(self, client):
        self.c = client
        self.sid = client.session(CONTROL_TEXT)
        self.golden = self._next()
        self.state = client.state(self.sid)

    def _next(self):
        return self.c.generate(self.sid, max_tokens=8, temperature=0, commit=False)["tokens"]

    def check(self):
        assert self.c.s.alive(), "server died"
        assert requests.get(self.c.s.url("/health"), timeout=5).status_code == 200
        assert self._next() == self.golden, "control session's output changed"
        assert self.c.state(self.sid) == self.state, "control session's state changed"
        self.c.ok(self.c.req("DELETE", f"/v1/sessions/{self.sid}"))


@pytest.fixture
def control(c):
    ctl = Control(c)
    yield ctl
    ctl.check()
