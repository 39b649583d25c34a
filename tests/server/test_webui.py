"""The built-in page (issue 18): GET / and /ui/* are public, served with a
strict CSP, their Content-Type and an ETag (304 on revalidation); the API
behind them keeps its auth."""
import requests

from conftest import Server, error_of

ASSETS = {
    "/": "text/html",
    "/ui/index.html": "text/html",
    "/ui/app.js": "text/javascript",
    "/ui/style.css": "text/css",
}


def test_assets_public_with_headers(models):
    s = Server(models["a"], "--api-key", "sekrit")
    try:
        for path, ctype in ASSETS.items():
            r = requests.get(s.url(path), timeout=5)
            assert r.status_code == 200, path
            assert r.headers["Content-Type"].startswith(ctype), path
            csp = r.headers["Content-Security-Policy"]
            assert "default-src 'self'" in csp and "unsafe-inline" not in csp
            assert r.headers["X-Content-Type-Options"] == "nosniff"
            etag = r.headers["ETag"]
            assert etag.startswith('"') and len(etag) > 4
            r2 = requests.get(s.url(path), headers={"If-None-Match": etag}, timeout=5)
            assert r2.status_code == 304 and r2.content == b""
            r3 = requests.get(s.url(path), headers={"If-None-Match": '"x"'}, timeout=5)
            assert r3.status_code == 200 and r3.content == r.content
        html = requests.get(s.url("/"), timeout=5).text
        assert '<script type="module" src="/ui/app.js">' in html
        assert "<script>" not in html and "style=" not in html  # nothing inline (CSP)
        # the API still needs the key; unknown /ui paths are the API's 404 behind auth
        error_of(requests.get(s.url("/v1/models"), timeout=5), 401)
        error_of(requests.get(s.url("/ui/nope.js"), timeout=5), 401)
        r = requests.get(s.url("/ui/nope.js"), headers={"Authorization": "Bearer sekrit"}, timeout=5)
        error_of(r, 404)
        # only GET/HEAD serve the page
        error_of(requests.post(s.url("/"), headers={"Authorization": "Bearer sekrit"}, timeout=5), 404)
        h = requests.head(s.url("/ui/app.js"), timeout=5)
        assert h.status_code == 200
    finally:
        assert s.stop() == 0


def test_models_training_context(models, tmp_path):
    """config.json's "training_context" (the page's chart marker) is in
    /v1/models when the model has one, and absent otherwise."""
    import json
    import shutil
    d = tmp_path / "with-ctx"
    shutil.copytree(models["a"], d)
    cfg = json.loads((d / "config.json").read_text())
    cfg["training_context"] = 2048
    (d / "config.json").write_text(json.dumps(cfg))
    for model, want in ((str(d), 2048), (models["a"], None)):
        s = Server(model)
        try:
            m = requests.get(s.url("/v1/models"), timeout=5).json()["data"][0]
            assert m.get("training_context") == want
        finally:
            assert s.stop() == 0
