"""clients/demo.sh runs to the end against the real server and finds the
restored session identical to the original."""
import os
import shutil
import subprocess

import pytest

from conftest import ROOT


def test_demo_script(srv, tmp_path):
    if not shutil.which("curl"):
        pytest.skip("curl is not installed")
    doc = tmp_path / "doc.txt"
    # a short document keeps the byte-level test model quick
    doc.write_text("It was a dark and stormy night; the rain fell in torrents. " * 20)
    r = subprocess.run([os.path.join(ROOT, "clients", "demo.sh"), str(doc)],
                       env=dict(os.environ, RECURD_URL=srv.base), capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "identical: same scores, same tokens, same state bytes" in r.stdout
    assert r.stdout.count('"deleted":true') == 3
