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


def test_every_error_type_documented():
    with open(os.path.join(ROOT, "proto", "apierr.c")) as f:
        types = set(re.findall(r'\{\d{3}, "([a-z_]+)"\}', f.read())) - {"ok"}
    assert len(types) >= 15
    with open(DOC) as f:
        doc = f.read()
    with open(OPENAPI) as f:
        spec = yaml.safe_load(f)
    enum = set(spec["components"]["schemas"]["Error"]["properties"]["error"]["properties"]
               ["type"]["enum"])
    for t in types:
        assert f"`{t}`" in doc, f"{t} missing from docs/server.md"
    assert enum == types, f"openapi enum differs: {enum ^ types}"
