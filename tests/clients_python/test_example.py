"""The example script runs against the real server; the package is Python
3.9 code (checked by parsing, and by running a smoke script under a
python3.9 when one is installed)."""
import ast
import math
import os
import shutil
import subprocess
import sys

import pytest

from conftest import CLIENT_DIR, TEXT

EXAMPLE = os.path.join(CLIENT_DIR, "examples", "stream_book.py")


def sources():
    out = [EXAMPLE]
    pkg = os.path.join(CLIENT_DIR, "recur_client")
    out += [os.path.join(pkg, f) for f in sorted(os.listdir(pkg)) if f.endswith(".py")]
    return out


def run_example(srv, *args, python=sys.executable, env=None):
    e = dict(os.environ, RECURD_URL=srv.base, PYTHONDONTWRITEBYTECODE="1")
    e.pop("RECURD_API_KEY", None)
    e.update(env or {})
    return subprocess.run([python, "-X", "dev", "-W", "error", EXAMPLE, *args], env=e,
                          capture_output=True, text=True, timeout=120)


def test_stream_book_example(srv, client, tmp_path):
    doc = tmp_path / "book.txt"
    body = ("It was a dark and stormy night; the rain fell in torrents. " * 300).encode()
    doc.write_bytes(body)
    before = {s.id for s in client.list_sessions()}
    r = run_example(srv, str(doc), "--max-tokens", "20", "--seed", "3", "--chunk-size", "4096")
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    out = r.stdout
    assert "read %d tokens" % len(body) in out
    want = client.score(body.decode())
    assert "perplexity %.3f over %d predictions" % (want.ppl, want.n_scored) in out
    rows = [l for l in out.splitlines() if l.startswith("  [")]
    assert len(rows) == len(want.buckets)
    for line, b in zip(rows, want.buckets):
        assert line.split()[:3] == ["[%d," % b.start, "%d)" % b.end, str(b.n)]
        assert math.isclose(float(line.split()[-1]), b.ppl, rel_tol=1e-3)
    assert "[20 tokens, finish_reason length, position %d]" % (len(body) + 20) in out
    assert "sent 0.0 MiB" in r.stderr or "sent" in r.stderr  # progress on stderr
    after = {s.id for s in client.list_sessions()}
    assert after == before, "the example left its session behind"
    # --keep keeps it and prints its id
    r = run_example(srv, str(doc), "--max-tokens", "2", "--keep", "--quiet")
    assert r.returncode == 0 and r.stderr == "", r.stderr
    sid = r.stdout.strip().splitlines()[-1].split()[-1]
    assert client.get_session(sid).position == len(body) + 2
    client.delete_session(sid)


def test_stream_book_errors(srv, tmp_path):
    r = run_example(srv, str(tmp_path / "missing.txt"), "--quiet")
    assert r.returncode == 1 and "error:" in r.stderr and "Traceback" not in r.stderr
    doc = tmp_path / "d.txt"
    doc.write_text("hello")
    r = run_example(srv, str(doc), "--url", "http://127.0.0.1:1", "--quiet")
    assert r.returncode == 1 and "cannot reach" in r.stderr and "Traceback" not in r.stderr


class Py39(ast.NodeVisitor):
    """Syntax newer than 3.9 that ast.parse(feature_version=(3, 9)) lets
    through: X | Y in annotations (evaluated at definition time in 3.9)."""

    def __init__(self):
        self.bad = []

    def check(self, ann):
        if ann is None:
            return
        for n in ast.walk(ann):
            if isinstance(n, ast.BinOp) and isinstance(n.op, ast.BitOr):
                self.bad.append(n.lineno)
            if isinstance(n, ast.Constant) and isinstance(n.value, str) and "|" in n.value:
                self.bad.append(n.lineno)

    def visit_arg(self, node):
        self.check(node.annotation)

    def visit_FunctionDef(self, node):
        self.check(node.returns)
        self.generic_visit(node)

    def visit_AnnAssign(self, node):
        self.check(node.annotation)
        self.generic_visit(node)


def test_python39_syntax():
    for path in sources():
        with open(path, encoding="utf-8") as f:
            src = f.read()
        tree = ast.parse(src, path, feature_version=(3, 9))
        v = Py39()
        v.visit(tree)
        assert not v.bad, "%s: X | Y annotations at lines %s" % (path, v.bad)
        assert not any(isinstance(n, ast.Match) for n in ast.walk(tree)
                       if hasattr(ast, "Match")), path
        for n in ast.walk(tree):  # standard library only
            if isinstance(n, ast.Import):
                names = [a.name.split(".")[0] for a in n.names]
            elif isinstance(n, ast.ImportFrom) and n.level == 0:
                names = [n.module.split(".")[0]]
            else:
                continue
            for name in names:
                assert name == "recur_client" or name in sys.stdlib_module_names, (path, name)


SMOKE = r"""
import io, sys
sys.path.insert(0, sys.argv[1])
import recur_client as rc
c = rc.Client()
assert c.health() == "ok" and c.model().vocab_size == 256
s = c.create_session()
r = c.append_file(s, io.BytesIO(sys.argv[2].encode() * 50), chunk_size=100)
assert r.n_tokens == 50 * len(sys.argv[2].encode()) and r.ppl > 1
g = c.generate(s, max_tokens=8, seed=2, commit=False)
st = c.generate_stream(s, max_tokens=8, seed=2, commit=False)
assert st.result().tokens == g.tokens
b = c.restore(c.get_state(s))
assert c.append(b, "x").raw == c.append(c.fork(s), "x").raw
assert "".join(ch.text for ch in c.completions_stream("Hi", max_tokens=3, temperature=0)) \
    == c.completions("Hi", max_tokens=3, temperature=0).text
assert c.detokenize(c.tokenize("héllo")) == "héllo"
try:
    c.get_session("0" * 32)
except rc.NotFound as e:
    assert e.status == 404
else:
    raise AssertionError("no NotFound")
print("ok", sys.version_info[:2])
"""


def python39():
    """A Python 3.9 to run the client under: $RECUR_PYTHON39, else python3.9
    on PATH if it runs (a version manager's shim may not)."""
    for py in (os.environ.get("RECUR_PYTHON39"), shutil.which("python3.9")):
        if not py:
            continue
        try:
            r = subprocess.run([py, "-c", "import sys; print(sys.version_info[:2])"],
                               capture_output=True, text=True, timeout=30)
        except OSError:
            continue
        if r.returncode == 0 and r.stdout.strip() == "(3, 9)":
            return py
    return None


def test_python39_runs(srv):
    py = python39()
    if not py:
        pytest.skip("no working Python 3.9 (set RECUR_PYTHON39 or put python3.9 on PATH)")
    e = dict(os.environ, RECURD_URL=srv.base, PYTHONDONTWRITEBYTECODE="1")
    e.pop("RECURD_API_KEY", None)
    r = subprocess.run([py, "-X", "dev", "-W", "error", "-c", SMOKE, CLIENT_DIR, TEXT], env=e,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.strip() == "ok (3, 9)"
    # and the example script
    doc = os.path.join(CLIENT_DIR, "README.md")
    r = run_example(srv, doc, "--max-tokens", "4", "--quiet", python=py)
    assert r.returncode == 0 and "[4 tokens, finish_reason length" in r.stdout, r.stderr
