"""Black-box tests of `recurd tokenize` / `recurd detokenize`.

Ids are checked against the reference cases HF tokenizers gave for our model's tokenizer
(tests/fixtures/tokenizer/recur-sp/cases.json); the library itself is tested against the
full goldens by the C tests.
"""
import json
import os
import subprocess

import pytest

RECURD = os.environ.get("RECURD", "build/server/recurd")
ROOT = os.path.join(os.path.dirname(__file__), "..", "..")
MODEL = os.path.join(ROOT, "models", "recur-sp")
TOK = os.path.join(MODEL, "tokenizer.json")
CASES = os.path.join(ROOT, "tests", "fixtures", "tokenizer", "recur-sp", "cases.json")


def run(*args, input=b"", check=True):
    p = subprocess.run([RECURD, *args], input=input, capture_output=True, timeout=300)
    if check and p.returncode != 0:
        raise AssertionError(f"recurd {' '.join(args)} exited {p.returncode}: {p.stderr}")
    return p


def cases():
    with open(CASES, encoding="utf-8") as f:
        return json.load(f)["cases"]


@pytest.mark.parametrize("tok", [TOK, MODEL])  # a file, or the model directory
def test_tokenize_matches_reference(tok):
    for c in cases():
        out = run("tokenize", "--tokenizer", tok, input=c["text"].encode("utf-8")).stdout
        assert [int(x) for x in out.split()] == c["ids"], c["text"]
        j = json.loads(run("tokenize", "--tokenizer", tok, "--json",
                           input=c["text"].encode("utf-8")).stdout)
        assert j == {"ids": c["ids"], "n_tokens": len(c["ids"])}


def test_detokenize_round_trip():
    for c in cases():
        out = run("detokenize", "--tokenizer", TOK,
                  input=" ".join(map(str, c["ids"])).encode()).stdout
        assert out.decode("utf-8") == c["decoded"], c["text"]


def test_invalid_utf8_is_replaced_like_python():
    raw = b"a\xffb\xe2\x82 \xed\xa0\x80 ok\xf0\x9f\x98"
    ids = run("tokenize", "--tokenizer", TOK, input=raw).stdout
    text = run("detokenize", "--tokenizer", TOK, input=ids).stdout.decode("utf-8")
    assert text == raw.decode("utf-8", errors="replace")


def test_skip_special_and_no_special():
    t = b"one<|endoftext|>two"
    ids = [int(x) for x in run("tokenize", "--tokenizer", TOK, input=t).stdout.split()]
    assert 0 in ids  # <|endoftext|> is id 0
    plain = [int(x) for x in run("tokenize", "--tokenizer", TOK, "--no-special",
                                 input=t).stdout.split()]
    assert 0 not in plain
    txt = run("detokenize", "--tokenizer", TOK, "--skip-special",
              input=" ".join(map(str, ids)).encode()).stdout
    assert txt == b"onetwo"


def test_large_input_streams():
    text = ("The quick brown fox jumps over the lazy dog. " * 40000).encode()  # 1.8 MB
    out = run("tokenize", "--tokenizer", TOK, "--json", input=text).stdout
    j = json.loads(out)
    assert j["n_tokens"] == len(j["ids"]) > 100000
    back = run("detokenize", "--tokenizer", TOK,
               input=" ".join(map(str, j["ids"])).encode()).stdout
    assert back == text


def test_errors(tmp_path):
    p = run("detokenize", "--tokenizer", TOK, input=b"1 2 99999", check=False)
    assert p.returncode == 1 and b"token 2" in p.stderr
    p = run("detokenize", "--tokenizer", TOK, input=b"1 x", check=False)
    assert p.returncode == 1
    p = run("tokenize", "--tokenizer", str(tmp_path / "missing.json"), check=False)
    assert p.returncode == 1 and b"missing.json" in p.stderr
    bad = tmp_path / "bad.json"
    bad.write_text('{"model": {"type": "WordPiece", "vocab": {}}}')
    p = run("tokenize", "--tokenizer", str(bad), check=False)
    assert p.returncode == 1 and b"WordPiece" in p.stderr
    p = run("tokenize", check=False)
    assert p.returncode == 2


def test_model_dir_without_tokenizer_uses_bytes(tmp_path):
    p = run("tokenize", "--tokenizer", str(tmp_path), input=b"hi\xff")
    assert p.stdout.split() == [b"104", b"105", b"255"]
    assert b"byte ids" in p.stderr
