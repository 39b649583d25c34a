"""deploy/haproxy.cfg, run for real: Debian's haproxy in front of stand-in
replicas (dummy_replica.py) on 127.0.0.1 ports, started and stopped here by PID.

What the cluster relies on the proxy for (docs/cluster.md, "Routing"): a
session's requests keep reaching one replica; different sessions spread over
all of them; everything else goes round-robin; a killed, stopped or draining
(/health 503) replica leaves within about two seconds while every other
session stays where it was, and comes back when it recovers; token streams and
streamed uploads pass through unbuffered.

Without haproxy the tests skip, except under CI=true, where they fail
(scripts/install-deps installs it).
"""
import collections
import csv
import io
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest
import requests

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
CFG = os.path.join(ROOT, "deploy", "haproxy.cfg")
HAPROXY = shutil.which("haproxy") or ("/usr/sbin/haproxy" if os.path.exists("/usr/sbin/haproxy") else None)

if HAPROXY is None:
    if os.environ.get("CI") == "true":
        raise RuntimeError("haproxy is not installed (scripts/install-deps installs it); "
                           "CI=true: the routing tests must run")
    pytest.skip("haproxy is not installed (apt-get install haproxy, or scripts/install-deps)",
                allow_module_level=True)

N = 3  # replicas


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(cond, timeout, step=0.05):
    """Seconds until cond() held, or None after timeout."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if cond():
            return time.monotonic() - t0
        time.sleep(step)
    return None


class Replica:
    def __init__(self, name, port, cwd):
        self.name, self.port, self.cwd = name, port, cwd
        self.proc = None

    def start(self):
        self.proc = subprocess.Popen(
            [sys.executable, os.path.join(HERE, "dummy_replica.py"), self.name, str(self.port)],
            cwd=self.cwd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        assert self.proc.stdout.readline().strip() == b"ready", f"{self.name} did not start"

    def signal(self, sig):
        os.kill(self.proc.pid, sig)

    def stop(self):
        if self.proc and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            os.kill(self.proc.pid, signal.SIGCONT)  # in case a test left it stopped
        if self.proc:
            self.proc.wait(timeout=10)
            self.proc.stdout.close()

    def sick(self, on):
        path = os.path.join(self.cwd, f"{self.port}.sick")
        if on:
            open(path, "w").close()
        else:
            os.unlink(path)


class Cluster:
    """N stand-in replicas behind deploy/haproxy.cfg, configured through the
    environment variables the file reads."""

    def __init__(self, tmp):
        self.tmp = tmp
        self.replicas = [Replica(f"d{i + 1}", free_port(), tmp) for i in range(N)]
        for r in self.replicas:
            r.start()
        self.port = free_port()
        self.sock = os.path.join(tmp, "admin.sock")
        self.env = dict(os.environ, PROXY_BIND=f"127.0.0.1:{self.port}",
                        PROXY_ADMIN_SOCKET=self.sock,
                        **{f"REPLICA_{i + 1}": f"127.0.0.1:{r.port}"
                           for i, r in enumerate(self.replicas)})
        self.log = open(os.path.join(tmp, "haproxy.log"), "w")
        self.proc = subprocess.Popen([HAPROXY, "-db", "-f", CFG], env=self.env,
                                     stdout=self.log, stderr=subprocess.STDOUT)
        self.base = f"http://127.0.0.1:{self.port}"
        self.http = requests.Session()
        assert wait_until(lambda: self.states() == ["UP"] * N, 10) is not None, self.states()

    def close(self):
        self.http.close()
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
        self.proc.wait(timeout=10)
        self.log.close()
        for r in self.replicas:
            r.stop()

    def states(self):
        """Each server's status from the runtime API ("UP", "DOWN", ...)."""
        try:
            with socket.socket(socket.AF_UNIX) as s:
                s.settimeout(2)
                s.connect(self.sock)
                s.sendall(b"show stat\n")
                out = b""
                while chunk := s.recv(65536):
                    out += chunk
        except OSError:
            return []
        rows = csv.DictReader(io.StringIO(out.decode().lstrip("# ")))
        return [r["status"] for r in rows
                if r["pxname"] == "replicas" and r["svname"] not in ("BACKEND", "FRONTEND")]

    def who(self, method, path, **kw):
        r = self.http.request(method, self.base + path, timeout=10, **kw)
        assert r.status_code == 200, (path, r.status_code, r.text[:200])
        return r.headers["X-Recurd-Replica"]

    def home(self, sid):
        return self.who("POST", f"/v1/sessions/{sid}/append", data="x")


@pytest.fixture
def cluster(tmp_path):
    c = Cluster(str(tmp_path))
    try:
        yield c
    finally:
        c.close()


def sids(n):
    return [secrets.token_hex(16) for _ in range(n)]


def test_config_needs_replicas():
    """haproxy -c accepts the file with replicas given (an IP, and a name that
    does not resolve yet, as a pod not yet created: its slot starts down), with
    the optional stats and admin listeners; it refuses the file, naming the
    variable, without replicas. (-c binds nothing.)"""
    env = dict(os.environ, REPLICA_1="127.0.0.1:8081",
               REPLICA_2="recurd-1.recurd.default.svc.cluster.local:8080",
               PROXY_STATS_BIND="127.0.0.1:8404", PROXY_ADMIN_SOCKET="/tmp/unused.sock")
    ok = subprocess.run([HAPROXY, "-c", "-f", CFG], env=env, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    env = {k: v for k, v in os.environ.items() if not k.startswith("REPLICA_")}
    bad = subprocess.run([HAPROXY, "-c", "-f", CFG], env=env, capture_output=True, text=True)
    assert bad.returncode != 0 and "REPLICA_1 is not set" in bad.stdout + bad.stderr


def test_sessions_stick_and_spread(cluster):
    ids = sids(300)
    home = {sid: cluster.home(sid) for sid in ids}
    # every route of one session, any method, reaches its replica
    for sid in ids[:50]:
        for method, tail in (("POST", "/append"), ("POST", "/generate"), ("GET", ""),
                             ("GET", "/state"), ("DELETE", "")):
            assert cluster.who(method, f"/v1/sessions/{sid}{tail}") == home[sid], (sid, tail)
    assert all(cluster.home(sid) == home[sid] for sid in ids)
    spread = collections.Counter(home.values())
    assert set(spread) == {r.name for r in cluster.replicas}
    assert min(spread.values()) >= 300 // N // 2, spread  # no replica starved


def test_sessionless_requests_round_robin(cluster):
    names = {r.name for r in cluster.replicas}
    for method, path in (("POST", "/v1/sessions"), ("POST", "/v1/completions"),
                         ("POST", "/v1/tokenize"), ("GET", "/v1/models"),
                         ("POST", "/v1/score"), ("GET", "/health"),
                         # not a session id (upper case, short): not hashed
                         ("GET", "/v1/sessions/" + "A" * 32), ("GET", "/v1/sessions/abc")):
        seen = collections.Counter(cluster.who(method, path) for _ in range(10 * N))
        assert set(seen) == names, (path, seen)


def test_killed_replica_leaves_and_returns(cluster):
    ids = sids(200)
    home = {sid: cluster.home(sid) for sid in ids}
    victim = cluster.replicas[0]
    mine = [sid for sid in ids if home[sid] == victim.name]
    assert mine
    victim.stop()  # kill -9
    # before any health check has noticed, a request for its session is retried
    # on a live replica (connection refused: retry-on conn-failure, redispatch)
    t0 = time.monotonic()
    assert cluster.home(mine[0]) != victim.name
    assert time.monotonic() - t0 < 1.5
    # the checks take it out of the ring within about two seconds
    took = wait_until(lambda: cluster.states()[0] == "DOWN", 5)
    assert took is not None and took <= 2.0, (took, cluster.states())
    moved = {sid: cluster.home(sid) for sid in ids}
    assert all(moved[sid] == home[sid] for sid in ids if sid not in mine), \
        "a live replica's session moved"
    assert len({moved[sid] for sid in mine}) == N - 1, "its sessions did not spread"
    # restarted on its address, it gets its own sessions back
    victim.start()
    assert wait_until(lambda: cluster.states()[0] == "UP", 5) is not None, cluster.states()
    assert all(cluster.home(sid) == home[sid] for sid in ids)


def test_stopped_replica_leaves(cluster):
    """SIGSTOP: the connection opens but nothing answers; the 1 s check
    timeout takes it out within about three seconds."""
    victim = cluster.replicas[1]
    victim.signal(signal.SIGSTOP)
    took = wait_until(lambda: cluster.states()[1] == "DOWN", 6)
    victim.signal(signal.SIGCONT)
    assert took is not None and took <= 3.0, (took, cluster.states())
    assert wait_until(lambda: cluster.states()[1] == "UP", 5) is not None


def test_draining_replica_taken_out(cluster):
    """/health 503 (a replica draining after SIGTERM, or loading): no new
    request of any kind reaches it while the others keep their sessions."""
    ids = sids(200)
    home = {sid: cluster.home(sid) for sid in ids}
    victim = cluster.replicas[2]
    victim.sick(True)
    took = wait_until(lambda: cluster.states()[2] == "DOWN", 5)
    assert took is not None and took <= 2.0, (took, cluster.states())
    now = {sid: cluster.home(sid) for sid in ids}
    assert victim.name not in now.values()
    assert all(now[sid] == home[sid] for sid in ids if home[sid] != victim.name)
    assert victim.name not in {cluster.who("POST", "/v1/sessions") for _ in range(3 * N)}
    victim.sick(False)
    assert wait_until(lambda: cluster.states()[2] == "UP", 5) is not None
    assert all(cluster.home(sid) == home[sid] for sid in ids)


def test_streams_pass_unbuffered(cluster):
    """Server-sent events keep their 50 ms spacing through the proxy (each
    token reaches the client when it is made), and a streamed upload reaches
    the replica as it is sent, not once it has ended."""
    sid = sids(1)[0]
    with socket.create_connection(("127.0.0.1", cluster.port), timeout=10) as s:
        s.sendall(f"GET /v1/sessions/{sid}/sse HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        buf, arrivals = b"", []
        while not buf.endswith(b"0\r\n\r\n"):
            chunk = s.recv(65536)
            assert chunk, "stream ended early"
            buf += chunk
            arrivals += [time.monotonic()] * (buf.count(b"data: ") - len(arrivals))
    gaps = [b - a for a, b in zip(arrivals, arrivals[1:])]
    assert len(arrivals) == 8 and min(gaps) > 0.02 and max(gaps) < 0.15, \
        [round(g * 1000) for g in gaps]

    def body():
        yield b"a" * 1000
        time.sleep(0.5)
        yield b"b" * 1000
    r = cluster.http.post(f"{cluster.base}/v1/sessions/{sid}/append", data=body(), timeout=10)
    assert r.status_code == 200 and r.json()["bytes"] == 2000
    assert r.json()["spread"] > 0.3, r.json()
