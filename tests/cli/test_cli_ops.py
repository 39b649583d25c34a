"""`recurd detokenize --json` (README lists `[--json]` for both tokenize and
detokenize): the text as a JSON object, like POST /v1/detokenize's."""
import json
import os
import subprocess

RECURD = os.environ.get("RECURD", "build/server/recurd")
ROOT = os.path.join(os.path.dirname(__file__), "..", "..")
TOK = os.path.join(ROOT, "models", "recur-sp", "tokenizer.json")
CASES = os.path.join(ROOT, "tests", "fixtures", "tokenizer", "recur-sp", "cases.json")


def run(*args, input=b""):
    return subprocess.run([RECURD, *args], input=input, capture_output=True, timeout=120)


def test_detokenize_json():
    with open(CASES, encoding="utf-8") as f:
        cases = json.load(f)["cases"]
    assert cases
    for c in cases:
        p = run("detokenize", "--tokenizer", TOK, "--json",
                input=" ".join(map(str, c["ids"])).encode())
        assert p.returncode == 0, p.stderr
        assert p.stdout.endswith(b"\n") and p.stdout.count(b"\n") == 1
        assert json.loads(p.stdout) == {"text": c["decoded"], "n_tokens": len(c["ids"])}
    # a bad id: exit 1, a message, nothing on stdout
    p = run("detokenize", "--tokenizer", TOK, "--json", input=b"1 2 999999999")
    assert p.returncode == 1 and p.stdout == b"" and p.stderr
    h = run("detokenize", "--help")
    assert b"--json" in h.stdout + h.stderr
