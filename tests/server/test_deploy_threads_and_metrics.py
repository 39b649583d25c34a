"""Issue 12, operations: the deploy files (Dockerfile pinned, Kubernetes
manifest admissible under PodSecurity "restricted"), `cmake --install`,
the thread count under CPU affinity, and the metrics an operator expects."""
import os
import re
import shutil
import subprocess
import tempfile
import time

import pytest
import yaml

from conftest import BIN, ROOT, Client, Server, make_model

DOCKERFILE = os.path.join(ROOT, "Dockerfile")
K8S = os.path.join(ROOT, "deploy", "kubernetes")  # single.yaml and the cluster's


# ---- deploy files -----------------------------------------------------------

def test_dockerfile_base_images_pinned():
    """Every FROM names a base image by digest or by a point-release tag
    (debian:12.N[-slim]), never a moving tag such as debian:12 or latest."""
    with open(DOCKERFILE) as f:
        froms = re.findall(r"^FROM\s+(\S+)", f.read(), re.M)
    assert len(froms) >= 2, froms
    versions = set()
    for image in froms:
        if "@sha256:" in image:
            continue
        m = re.fullmatch(r"debian:(\d+\.\d+)(-slim)?", image)
        assert m, f"{image}: not pinned to a point release or digest"
        versions.add(m.group(1))
    assert len(versions) <= 1, f"build and run stages differ: {versions}"


def _pod_specs():
    """(file, workload name, pod spec) of every workload in deploy/kubernetes/."""
    out = []
    for name in sorted(os.listdir(K8S)):
        if not name.endswith(".yaml") or name == "kustomization.yaml":
            continue
        with open(os.path.join(K8S, name)) as f:
            docs = [d for d in yaml.safe_load_all(f) if d]
        out += [(name, d["metadata"]["name"], d["spec"]["template"]["spec"]) for d in docs
                if d["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job")]
    assert len(out) >= 4, out  # single.yaml's, recurd's, Redis's, HAProxy's
    return out


@pytest.mark.parametrize("where,pod", [pytest.param((f, w), p, id=f"{f}:{w}")
                                       for f, w, p in _pod_specs()])
def test_kubernetes_manifest_pod_security_restricted(where, pod):
    """The checks of the PodSecurity "restricted" profile (Kubernetes
    pod-security-standards) that a manifest can fail, pod and container, for
    every workload (the cluster's pods also keep their root filesystem
    read-only)."""
    psc = pod.get("securityContext", {})
    for flag in ("hostNetwork", "hostPID", "hostIPC"):
        assert not pod.get(flag), flag
    for v in pod.get("volumes", []):
        kinds = set(v) - {"name"}
        assert kinds <= {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral",
                          "persistentVolumeClaim", "projected", "secret"}, v
    ctrs = pod["containers"] + pod.get("initContainers", [])
    assert ctrs
    for c in ctrs:
        sc = c.get("securityContext", {})
        name = c["name"]
        # runAsNonRoot: the container's, else the pod's, must be true
        assert sc.get("runAsNonRoot", psc.get("runAsNonRoot")) is True, name
        uid = sc.get("runAsUser", psc.get("runAsUser"))
        assert uid is None or uid != 0, name
        assert sc.get("allowPrivilegeEscalation") is False, name
        assert not sc.get("privileged"), name
        caps = sc.get("capabilities", {})
        assert [x.upper() for x in caps.get("drop", [])] == ["ALL"], name
        assert set(caps.get("add", [])) <= {"NET_BIND_SERVICE"}, name
        seccomp = sc.get("seccompProfile", psc.get("seccompProfile", {}))
        assert seccomp.get("type") in ("RuntimeDefault", "Localhost"), name
        for p in c.get("ports", []):
            assert "hostPort" not in p, name
        if where[0] != "single.yaml":  # it persists sessions in its state dir
            assert sc.get("readOnlyRootFilesystem") is True, (where, name)


# ---- install ----------------------------------------------------------------

def test_cmake_install_puts_both_binaries_on_path(tmp_path):
    """cmake --install into a fresh prefix gives prefix/bin/recurd and
    prefix/bin/recur, and both run from there (no build-tree paths)."""
    build = os.path.dirname(os.path.dirname(os.path.abspath(BIN)))
    assert os.path.exists(os.path.join(build, "CMakeCache.txt")), \
        f"{BIN} is not in a CMake build tree"
    prefix = tmp_path / "prefix"
    subprocess.run(["cmake", "--install", build, "--prefix", str(prefix)], check=True,
                   capture_output=True, timeout=120)
    env = dict(os.environ, PATH=f"{prefix}/bin:/usr/bin:/bin")
    v = subprocess.run(["recurd", "version"], env=env, capture_output=True, text=True,
                       timeout=30, cwd=tmp_path)
    assert v.returncode == 0 and v.stdout.startswith("recurd "), v
    assert shutil.which("recurd", path=env["PATH"]) == str(prefix / "bin" / "recurd")
    h = subprocess.run(["recur", "--help"], env=env, capture_output=True, text=True,
                       timeout=30, cwd=tmp_path)
    assert h.returncode == 0 and "usage: recur" in h.stdout, h
    assert shutil.which("recur", path=env["PATH"]) == str(prefix / "bin" / "recur")


# ---- threads ----------------------------------------------------------------

def _loaded_line(s):
    """The model's "loaded" log line (stderr is read by a thread: wait for it)."""
    assert s.wait_log(" loaded: ", timeout=10), "\n".join(s.log()[-5:])
    return next(l for l in s.log() if " loaded: " in l)


def _pool_threads(pid):
    """Names of the server's threads (from /proc), counted by name."""
    names = {}
    for t in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{t}/comm") as f:
                n = f.read().strip()
        except OSError:
            continue
        names[n] = names.get(n, 0) + 1
    return names


def _metric(text, name):
    m = re.search(r"^" + re.escape(name) + r" (\S+)$", text, re.M)
    assert m, f"{name} missing"
    return float(m.group(1))


def _need(tool, package):
    """A tool the test needs: a failure under CI=true when missing, else a skip."""
    path = shutil.which(tool)
    if not path:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{tool} not installed (Debian package {package}; scripts/install-deps)")
        pytest.skip(f"{tool} not installed (Debian package {package})")
    return path


def test_threads_auto_follows_affinity(models):
    """--threads 0 under `taskset -c 0`: one compute thread (no pool
    workers), and OpenBLAS told to use one too. Only the mask taskset sets
    is assumed, never the host's core count."""
    import conftest
    _need("taskset", "util-linux")
    real = conftest.BIN
    wrapper = os.path.join(tempfile.mkdtemp(), "recurd-cpu0")
    with open(wrapper, "w") as f:
        f.write(f"#!/bin/sh\nexec taskset -c 0 {real} \"$@\"\n")
    os.chmod(wrapper, 0o755)
    conftest.BIN = wrapper
    try:
        # no OPENBLAS_NUM_THREADS: recurd decides BLAS's count too
        s = Server(models["a"], "--threads", "0",
                   env={"OPENBLAS_NUM_THREADS": "", "OMP_NUM_THREADS": ""})
    finally:
        conftest.BIN = real
    try:
        line = _loaded_line(s)
        print("recurd says:", line)
        assert re.search(r"\bthreads=1\b", line), line
        assert re.search(r"\bblas_threads=1\b", line), line
        names = _pool_threads(s.p.pid)
        print("threads by name:", names)
        assert names.get("recur-pool", 0) == 0, names
        text = Client(s).get("/metrics").text
        assert _metric(text, 'recurd_threads{kind="compute"}') == 1
        assert _metric(text, 'recurd_threads{kind="blas"}') == 1
    finally:
        assert s.stop() == 0


def test_threads_explicit_wins_and_blas_follows(models):
    """--threads 3 is taken as asked (pool of 3 with the compute thread),
    and OpenBLAS follows it unless OPENBLAS_NUM_THREADS says otherwise."""
    s = Server(models["a"], "--threads", "3",
               env={"OPENBLAS_NUM_THREADS": "", "OMP_NUM_THREADS": ""})
    try:
        line = _loaded_line(s)
        assert re.search(r"\bthreads=3\b", line), line
        assert re.search(r"\bblas_threads=3\b", line), line
        assert _pool_threads(s.p.pid).get("recur-pool", 0) == 2
    finally:
        assert s.stop() == 0
    s = Server(models["a"], "--threads", "3", env={"OPENBLAS_NUM_THREADS": "1"})
    try:
        line = _loaded_line(s)
        assert re.search(r"\bblas_threads=1\b", line), line
    finally:
        assert s.stop() == 0


# ---- metrics ----------------------------------------------------------------

def _samples(text):
    """{'name{labels}': value} of an exposition text (labels as written)."""
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, val = line.rsplit(" ", 1)
            out[key] = float(val)
    return out


def _m(c):
    r = c.get("/metrics")
    assert r.status_code == 200, r.text
    return _samples(r.text)


def _d(before, after, key):
    return after.get(key, 0) - before.get(key, 0)


STATE = 20480  # bytes of one state of the test model


@pytest.fixture(scope="module")
def msrv(models, tmp_path_factory):
    d = tmp_path_factory.mktemp("mstates")
    t0 = time.time()
    s = Server(models["a"], "--state-dir", d, "--state-memory", 4 * STATE)
    s.t0, s.t1 = t0, time.time()
    yield s
    assert s.stop() == 0


def test_metrics_build_info_and_process(msrv):
    c = Client(msrv)
    line = _loaded_line(msrv)
    fp = re.search(r"fingerprint=([0-9a-f]{16})", line).group(1)
    ver = subprocess.run([BIN, "version"], capture_output=True, text=True, check=True)
    version = ver.stdout.split()[1]
    m = _m(c)
    key = f'recurd_build_info{{version="{version}",model="model-a",fingerprint="{fp}"}}'
    assert m.get(key) == 1, [k for k in m if k.startswith("recurd_build_info")]
    # start time: between launching the process and seeing it ready (whole seconds)
    start = m["process_start_time_seconds"]
    assert msrv.t0 - 1 <= start <= msrv.t1 + 1, (msrv.t0, start, msrv.t1)
    # CPU seconds: what /proc says of the process, and it grows with work
    cpu0 = m["process_cpu_seconds_total"]
    assert abs(cpu0 - msrv.cpu_seconds()) < 0.5
    sid = c.session()
    t_end = time.time() + 0.5
    while time.time() < t_end:
        c.append(sid, "work for the CPU counter " * 40)
    cpu1 = _m(c)["process_cpu_seconds_total"]
    assert cpu1 > cpu0
    assert abs(cpu1 - msrv.cpu_seconds()) < 0.5


def test_metrics_requests_by_method_and_exact_code(msrv):
    c = Client(msrv)
    a = _m(c)
    c.get("/health")
    c.get("/health")
    r = c.get("/v1/sessions/sess_doesnotexist000000")
    assert r.status_code == 404
    r = c.req("DELETE", "/v1/sessions/sess_doesnotexist000000")
    assert r.status_code == 404
    sid = c.session()
    c.ok(c.req("DELETE", f"/v1/sessions/{sid}"))
    r = c.post(f"/v1/sessions/{sid}/append", {"text": 5})
    assert r.status_code in (400, 404)
    b = _m(c)
    k = 'recurd_requests_total{route="/health",method="GET",code="200"}'
    assert _d(a, b, k) == 2
    sess = [x for x in b if x.startswith('recurd_requests_total{route="/v1/sessions/{id}"')]
    assert _d(a, b, 'recurd_requests_total{route="/v1/sessions/{id}",method="GET",code="404"}') \
        == 1, sess
    assert _d(a, b, 'recurd_requests_total{route="/v1/sessions/{id}",method="DELETE",code="404"}') \
        == 1, sess
    assert _d(a, b, 'recurd_requests_total{route="/v1/sessions/{id}",method="DELETE",code="200"}') \
        == 1, sess
    assert _d(a, b, 'recurd_requests_total{route="/v1/sessions",method="POST",code="201"}') == 1
    # no status classes any more
    assert not any('status="' in x for x in b if x.startswith("recurd_requests_total"))


def test_metrics_ttft_itl_prefill_decode(msrv):
    c = Client(msrv)
    sid = c.session()
    a = _m(c)
    # input only: prefill moves, decode and the token histograms do not
    c.append(sid, "a long input for the prefill counter. " * 30)
    b = _m(c)
    assert _d(a, b, "recurd_prefill_seconds_total") > 0
    assert _d(a, b, "recurd_decode_seconds_total") == 0
    assert _d(a, b, "recurd_time_to_first_token_seconds_count") == 0
    assert _d(a, b, "recurd_inter_token_seconds_count") == 0
    # a generation of 12 tokens: one first token, 11 gaps
    g = c.generate(sid, max_tokens=12, temperature=0, ignore_eos=True)
    n = len(g["tokens"])
    assert n == 12
    d = _m(c)
    assert _d(b, d, "recurd_decode_seconds_total") > 0
    assert _d(b, d, "recurd_time_to_first_token_seconds_count") == 1
    assert _d(b, d, 'recurd_time_to_first_token_seconds_bucket{le="+Inf"}') == 1
    assert _d(b, d, "recurd_time_to_first_token_seconds_sum") > 0
    assert _d(b, d, "recurd_inter_token_seconds_count") == n - 1
    assert _d(b, d, "recurd_inter_token_seconds_sum") > 0
    # cumulative buckets never decrease and end at the count
    les = [k for k in d if k.startswith("recurd_inter_token_seconds_bucket")]
    vals = [d[k] for k in les]
    assert vals == sorted(vals) and vals[-1] == d["recurd_inter_token_seconds_count"]
    # the split adds up to the compute time (ticks without tokens aside)
    assert d["recurd_prefill_seconds_total"] + d["recurd_decode_seconds_total"] <= \
        d["recurd_compute_seconds_total"] + 1e-5


def test_metrics_state_budget_and_spilled(msrv):
    c = Client(msrv)
    m = _m(c)
    assert m["recurd_state_memory_budget_bytes"] == 4 * STATE
    spilled0 = m["recurd_sessions_spilled"]
    ids = []
    for i in range(8):
        for _ in range(200):
            r = c.post("/v1/sessions", {})
            if r.status_code == 201:
                ids.append(r.json()["id"])
                break
            assert r.status_code == 503
            time.sleep(0.02)
    end = time.time() + 5
    while time.time() < end:
        listed = {s["id"]: s for s in c.ok(c.get("/v1/sessions"))["data"]}
        n = sum(1 for i in ids if listed[i]["spilled"])
        if n >= 4:
            break
        time.sleep(0.05)
    n = _spilled_agree(c)
    assert n >= spilled0 + 4
    for i in ids:
        c.req("DELETE", f"/v1/sessions/{i}")
    assert _spilled_agree(c) <= n - 4


def _spilled_agree(c):
    """The gauge against the session list, read between two lists that
    agree (spills run on worker threads and may land in between)."""
    spilled = lambda: sum(1 for s in c.ok(c.get("/v1/sessions"))["data"] if s["spilled"])
    end = time.time() + 5
    while True:
        a, m, b = spilled(), _m(c)["recurd_sessions_spilled"], spilled()
        if a == b or time.time() > end:
            assert a == b == m, (a, m, b)
            return m
        time.sleep(0.05)


def test_metrics_threads_gauge(msrv):
    m = _m(Client(msrv))
    assert m['recurd_threads{kind="compute"}'] >= 1
    assert m['recurd_threads{kind="blas"}'] == 1  # OPENBLAS_NUM_THREADS=1 (conftest)


def test_metrics_promtool_clean(msrv):
    """promtool check metrics: no lint problems, after traffic of every kind
    above. In CI (CI=true) a missing promtool is a failure, not a skip."""
    promtool = _need("promtool", "prometheus")
    c = Client(msrv)
    sid = c.session("promtool traffic")
    c.generate(sid, max_tokens=3, temperature=0)
    c.get("/v1/nowhere")
    text = c.get("/metrics").text
    p = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 0 and not p.stdout.strip() and not p.stderr.strip(), \
        p.stdout + p.stderr


# ---- token positions --------------------------------------------------------

def test_token_position_means_the_same_in_scoring_and_generation(srv):
    """A token's `position` is its 0-based index in the session's stream
    (the state's position before it is read); a session's `position` (append
    result, done event, session facts) is the number of tokens read, i.e.
    the position the next token will get. Scoring, generation details and
    every stream event follow it."""
    from conftest import sse_events
    c = Client(srv)
    sid = c.session()
    p0 = c.append(sid, "first part. ")["position"]
    r = c.append(sid, "second part of the text", logprobs=True)
    toks = r["tokens"]
    assert [t["position"] for t in toks] == list(range(p0, p0 + len(toks)))
    assert toks[-1]["position"] == r["position"] - 1
    p1 = r["position"]
    # non-streamed generation with details: same numbering, continuing
    g = c.generate(sid, max_tokens=4, temperature=0, ignore_eos=True, logprobs=True)
    rows = g["logprobs"]
    assert [t["position"] for t in rows] == list(range(p1, p1 + 4)), rows
    assert g["position"] == p1 + 4
    # streamed generation: the event's position is the token's, as in
    # its token object; done's is the session's
    p2 = c.info(sid)["position"]
    assert p2 == p1 + 4
    with c.post(f"/v1/sessions/{sid}/generate",
                {"max_tokens": 5, "temperature": 0, "ignore_eos": True, "stream": True,
                 "logprobs": True}, stream=True) as resp:
        assert resp.status_code == 200
        evs = sse_events(resp)
    toks = [e for e in evs if isinstance(e, dict) and e.get("type") == "token"]
    done = next(e for e in evs if isinstance(e, dict) and e.get("type") == "done")
    assert len(toks) == 5
    assert [e["position"] for e in toks] == list(range(p2, p2 + 5)), toks
    assert [e["token"]["position"] for e in toks] == list(range(p2, p2 + 5))
    assert done["position"] == p2 + 5 == c.info(sid)["position"]


# ---- session facts ----------------------------------------------------------

def test_last_used_never_before_created(srv):
    """created is wall-clock time at creation; last_used is derived from the
    loop's (cached, millisecond) clock: it must never come out earlier, in
    any of the places facts appear (create, facts, list)."""
    c = Client(srv)
    bad = []
    for _ in range(100):
        r = c.post("/v1/sessions", {})
        assert r.status_code == 201
        sid = r.json()["id"]
        listed = next(x for x in c.ok(c.get("/v1/sessions"))["data"] if x["id"] == sid)
        for f in (r.json(), listed, c.info(sid)):
            if f["last_used"] < f["created"]:
                bad.append((f["created"], f["last_used"]))
        c.req("DELETE", f"/v1/sessions/{sid}")
    assert not bad, f"{len(bad)} facts with last_used < created, e.g. {bad[:3]}"
