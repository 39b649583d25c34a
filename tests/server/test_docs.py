"""The docs are true to the binary: every route in proto/openapi.yaml is
served, docs/server.md's options table is the binary's, and every error
type the code can produce is documented."""
import os
import re
import subprocess

import yaml

from conftest import BIN, ROOT, Client

OPENAPI = os.path.join(ROOT, "proto", "openapi.yaml")
DOC = os.path.join(ROOT, "docs", "server.md")


def test_openapi_routes_exist(srv):
    c = Client(srv)
    sid = c.session("a session for the route check")
    with open(OPENAPI) as f:
        spec = yaml.safe_load(f)
    n = 0
    for path, ops in spec["paths"].items():
        url = path.replace("{id}", sid).replace("{name}", "no-such-snapshot")
        for method in ops:
            if method == "parameters":
                continue
            body = {} if method in ("post", "put") else None
            headers = {"Content-Type": "application/json"}
            if path.endswith("/state") and method == "put":
                body, headers = b"x", {"Content-Type": "application/octet-stream"}
            r = c.req(method.upper(), url, headers=headers,
                      data=body if isinstance(body, bytes) else
                      (None if body is None else "{}"))
            n += 1
            assert r.status_code != 405, f"{method.upper()} {path}: 405"
            if r.status_code == 404:
                assert "no route" not in r.json()["error"]["message"], f"{method} {path}"
    assert n >= 19  # every (path, method) pair of the spec
    # and nothing is served that the spec does not list: an unknown path is 404
    assert c.get("/v1/not-in-the-spec").status_code == 404


def test_options_table_matches_binary():
    out = subprocess.run([BIN, "serve", "--help-markdown"], capture_output=True, text=True,
                         check=True).stdout
    with open(DOC) as f:
        doc = f.read()
    m = re.search(r"<!-- options:begin -->\n(.*?)<!-- options:end -->", doc, re.S)
    assert m, "options markers missing in docs/server.md"
    assert m.group(1) == out, "docs/server.md options table is stale: " \
        "regenerate it with recurd serve --help-markdown"


def test_every_error_code_documented():
    with open(os.path.join(ROOT, "proto", "apierr.c")) as f:
        src = f.read()
    rows = re.findall(r'\{(\d{3}), "([a-z_]+)", (T_[A-Z_]+)\}', src)
    types = {c for _, c, _ in rows} - {"ok"}
    assert len(types) >= 15
    with open(DOC) as f:
        doc = f.read()
    with open(OPENAPI) as f:
        spec = yaml.safe_load(f)
    props = spec["components"]["schemas"]["ApiError"]["properties"]
    for t in types:
        assert f"`{t}`" in doc, f"{t} missing from docs/server.md"
    assert set(props["code"]["enum"]) == types, f"openapi enum differs: {set(props['code']['enum']) ^ types}"
    categories = dict(re.findall(r'#define (T_[A-Z_]+) "([a-z_]+)"', src))
    used = {categories[t] for s, c, t in rows if c != "ok"}
    assert set(props["type"]["enum"]) == used
    for t in used:
        assert f"`{t}`" in doc, f"{t} missing from docs/server.md"


def test_deploy_files_agree_with_binary():
    """Dockerfile, deploy/kubernetes/ and deploy/compose.yaml (none can run
    here) name only real options, probe /health, and give SIGTERM's drain
    time to finish."""
    out = subprocess.run([BIN, "serve", "--help-markdown"], capture_output=True, text=True,
                         check=True).stdout
    envs = set(re.findall(r"`(RECURD_[A-Z_]+)`", out))
    assert "RECURD_MODEL" in envs and len(envs) >= 20
    with open(os.path.join(ROOT, "Dockerfile")) as f:
        docker = f.read()
    used = set(re.findall(r"\b(RECURD_[A-Z_]+)=", docker))
    assert used and used <= envs, used - envs
    assert "/health" in docker.split("HEALTHCHECK", 1)[1]
    uid = re.search(r"--uid (\d+)", docker).group(1)
    k8s = os.path.join(ROOT, "deploy", "kubernetes")
    for name, kind in (("single.yaml", "Deployment"), ("recurd.yaml", "StatefulSet")):
        with open(os.path.join(k8s, name)) as f:
            docs = [d for d in yaml.safe_load_all(f) if d]
        dep = next(d for d in docs if d["kind"] == kind)
        pod = dep["spec"]["template"]["spec"]
        (ctr,) = pod["containers"]
        env = {e["name"]: e.get("value") for e in ctr["env"]}
        assert set(env) <= envs, (name, set(env) - envs)
        port = int(env["RECURD_PORT"])
        assert ctr["ports"][0]["containerPort"] == port, name
        assert env["RECURD_HOST"] == "0.0.0.0", name  # the default, loopback, is unreachable in a pod
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert ctr[probe]["httpGet"]["path"] == "/health", (name, probe)
        assert pod["terminationGracePeriodSeconds"] > int(env["RECURD_DRAIN_TIMEOUT"]), name
        # the image's user (it owns single.yaml's state volume)
        assert pod["securityContext"]["runAsUser"] == int(uid), name
        svc = next(d for d in docs if d["kind"] == "Service")
        assert svc["spec"]["ports"][0]["targetPort"] in ("http", port), name
    with open(os.path.join(ROOT, "deploy", "compose.yaml")) as f:
        compose = yaml.safe_load(f)
    replicas = [s for n, s in compose["services"].items() if n.startswith("recurd-")]
    assert replicas
    for s in replicas:
        assert set(s["environment"]) <= envs, set(s["environment"]) - envs
        assert s["entrypoint"][-2:] == ["recurd", "serve"]
