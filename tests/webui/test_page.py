"""Issue 18: the page in a real browser (Debian chromium driven by npm
playwright-core, tests/webui/drive.mjs) against a real `recurd serve` on the
tiny test model: stream a document, chart, generate + stop, fork, download +
restore. Any console error or failed request fails it. Screenshots go to
$WEBUI_ARTIFACTS (CTest: <build>/webui-artifacts). Without chromium or
playwright-core (scripts/install-playwright) it skips, or fails when CI=true."""
import os
import shutil
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "server"))
from conftest import ROOT, Server, make_model  # noqa: E402

PW = os.environ.get("PLAYWRIGHT_DIR", os.path.join(ROOT, "build", "playwright"))
CHROMIUM = os.environ.get("CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
OUT = os.environ.get("WEBUI_ARTIFACTS", os.path.join(ROOT, "build", "webui-artifacts"))


def need(ok, what):
    if not ok:
        if os.environ.get("CI") == "true":
            pytest.fail(what + " is missing (CI=true)")
        pytest.skip(what + " is missing")


@pytest.mark.parametrize("key", [None, "webui-test-key"])
def test_page_in_chromium(tmp_path, key):
    need(os.path.exists(os.path.join(PW, "node_modules", "playwright-core")),
         "playwright-core (scripts/install-playwright)")
    need(os.access(CHROMIUM, os.X_OK), "chromium (scripts/install-deps)")
    need(shutil.which("node"), "node")
    model = make_model(str(tmp_path / "tiny"), seed=1)
    doc = tmp_path / "doc.txt"
    # 12 KiB of English with long runs: several appends (drive.mjs streams it
    # through the page, which splits it at pre-token boundaries)
    lic = "/usr/share/common-licenses/GPL-3"
    text = open(lic).read()[:12000] if os.path.exists(lic) else (
        "The quick brown fox jumps over the lazy dog. " * 300)
    doc.write_text(text)
    # --max-gen-tokens: drive.mjs's generate+stop asks for 10^8 tokens, so the
    # stop click always lands before the generation could end by length (the
    # tiny model wrote the old 100000 in about a second: a race it sometimes lost)
    srv = Server(model, "--max-gen-tokens", "100000000", *(["--api-key", key] if key else []))
    out = os.path.join(OUT, "key" if key else "open")
    try:
        env = dict(os.environ, PLAYWRIGHT_DIR=PW, CHROMIUM=CHROMIUM)
        if key:
            env["WEBUI_KEY"] = key
        # 50 s: each step fails by itself within 20 s (drive.mjs), and both
        # parameters must fit in CTest's 120 s with their output shown
        try:
            r = subprocess.run(["node", os.path.join(HERE, "drive.mjs"), srv.url("/"), str(doc), out],
                               env=env, capture_output=True, text=True, timeout=50)
        except subprocess.TimeoutExpired as e:
            pytest.fail("drive.mjs did not finish in 50 s; it printed:\n%s\n%s" % (
                e.stdout.decode() if e.stdout else "", e.stderr.decode() if e.stderr else ""))
        print(r.stdout)
        assert r.returncode == 0, r.stdout + r.stderr
        assert r.stdout.strip().endswith("ok")
        for f in ("streamed.png", "forked.png"):
            assert os.path.getsize(os.path.join(out, f)) > 1000
    finally:
        assert srv.stop() == 0
