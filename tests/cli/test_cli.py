"""Black-box tests of the recurd command line (score, bench, soak, version).

Run by CTest with RECURD=<path to the binary>; also `RECURD=build/server/recurd
python3 -m pytest tests/cli`.
"""
import json
import os
import struct
import subprocess

import numpy as np
import pytest

RECURD = os.environ.get("RECURD", "build/server/recurd")
FIX = os.path.join(os.path.dirname(__file__), "..", "fixtures", "engine")


def run(*args, input=None, check=True):
    p = subprocess.run([RECURD, *args], input=input, capture_output=True, text=True, timeout=300)
    if check and p.returncode != 0:
        raise AssertionError(f"recurd {' '.join(args)} exited {p.returncode}: {p.stderr}")
    return p


def read_safetensors(path):
    b = open(path, "rb").read()
    n = struct.unpack("<Q", b[:8])[0]
    hdr = json.loads(b[8:8 + n])
    out = {}
    for k, v in hdr.items():
        if k == "__metadata__":
            continue
        s, e = v["data_offsets"]
        dt = {"F32": np.float32, "I32": np.int32}[v["dtype"]]
        out[k] = np.frombuffer(b[8 + n + s:8 + n + e], dtype=dt).reshape(v["shape"])
    return out


def log_softmax(x):
    x = x.astype(np.float64)
    m = x.max(axis=-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))


@pytest.mark.parametrize("name", ["m2_small", "m2_groups", "m1_odd"])
def test_score_json_matches_transformers(tmp_path, name):
    ref = read_safetensors(os.path.join(FIX, name, "reference.safetensors"))
    ids = ref["input_ids"]
    f = tmp_path / "ids.txt"
    f.write_text(" ".join(map(str, ids)) + "\n")
    out = json.loads(run("score", "--model", os.path.join(FIX, name), "--tokens", str(f),
                         "--json", "--chunk", "7").stdout)
    want = log_softmax(ref["logits"])[np.arange(len(ids) - 1), ids[1:]]
    got = np.array(out["token_logprobs"])
    assert out["n_tokens"] == len(ids) and out["n_scored"] == len(ids) - 1
    assert np.max(np.abs(got - want)) < 1e-4
    assert abs(out["nll"] + want.sum()) < 1e-3 * len(ids)
    assert abs(out["ppl"] - np.exp(-want.mean())) < 1e-3 * out["ppl"]
    # buckets: [0,1) holds the prediction of token 1; counts add up
    b = out["buckets"]
    assert b[0]["start"] == 0 and b[0]["end"] == 1 and b[0]["n"] == 1
    assert b[1]["start"] == 1 and b[1]["end"] == 2
    assert sum(x["n"] for x in b) == len(ids) - 1
    for x in b:
        lo, hi = x["start"], min(x["end"], len(ids) - 1)
        assert abs(x["ppl"] - np.exp(-want[lo:hi].mean())) < 1e-3 * x["ppl"]


def test_score_text_output_and_stdin():
    ids = "1 2 3 4 5 6 7 8 9 10"
    p = run("score", "--model", os.path.join(FIX, "m2_small"), "--tokens", "-", input=ids)
    lines = [l for l in p.stdout.splitlines() if not l.startswith("#")]
    assert len(lines) == 9
    pos, tok, lp = lines[0].split()
    assert (pos, tok) == ("1", "2") and float(lp) < 0
    assert "# n_tokens 10 scored 9" in p.stdout
    assert "# [0, 1) 1" in p.stdout


def test_score_max_details_omits_list(tmp_path):
    f = tmp_path / "ids.txt"
    f.write_text(" ".join(str(i % 90) for i in range(300)))
    out = json.loads(run("score", "--model", os.path.join(FIX, "m2_small"), "--tokens", str(f),
                         "--json", "--max-details", "100").stdout)
    assert "token_logprobs" not in out and out["n_scored"] == 299
    assert sum(b["n"] for b in out["buckets"]) == 299


@pytest.mark.parametrize("name", ["m2_small", "m1_small"])
def test_score_state_std_matches_transformers(tmp_path, name):
    """--state-every: the SSM state's std after 64 tokens (2^6) is the std of the final
    states transformers computed for the fixture (population std, per layer and all)."""
    ref = read_safetensors(os.path.join(FIX, name, "reference.safetensors"))
    ids = ref["input_ids"]
    assert len(ids) == 64
    f = tmp_path / "ids.txt"
    f.write_text(" ".join(map(str, ids)))
    out = json.loads(run("score", "--model", os.path.join(FIX, name), "--tokens", str(f),
                         "--json", "--state-every", "24").stdout)
    sd = out["state_std"]
    # after 2^k tokens and every 24 tokens, up to n = 64
    assert [p["pos"] for p in sd] == [1, 2, 4, 8, 16, 24, 32, 48, 64]
    layers = sorted(k for k in ref if k.startswith("ssm."))
    last = sd[-1]
    want = [float(ref[k].astype(np.float64).std()) for k in layers]
    assert len(last["layers"]) == len(layers)
    assert np.allclose(last["layers"], want, rtol=1e-4, atol=1e-7), (last["layers"], want)
    allv = np.concatenate([ref[k].astype(np.float64).ravel() for k in layers])
    assert abs(last["std"] - allv.std()) < 1e-4 * allv.std()
    # the trace changes along the stream (not one value repeated)
    assert len({round(p["std"], 9) for p in sd}) > 3
    # splitting the stream at the cuts does not change the scores
    plain = json.loads(run("score", "--model", os.path.join(FIX, name), "--tokens", str(f),
                           "--json").stdout)
    assert np.max(np.abs(np.array(out["token_logprobs"]) - plain["token_logprobs"])) < 1e-5


def test_score_failure_ratio(tmp_path):
    """--restart-ctx T: each target's stream log-prob is the stream's own, its restart
    log-prob is what a separate score of exactly x[t-T : t+1] gives for x[t], and the
    buckets pool them."""
    ref = read_safetensors(os.path.join(FIX, "m2_small", "reference.safetensors"))
    rng = np.random.default_rng(3)
    # 300 tokens: the fixture's 64, then ids drawn from its vocabulary
    ids = np.concatenate([ref["input_ids"], rng.integers(0, 90, 236)]).astype(int)
    f = tmp_path / "ids.txt"
    f.write_text(" ".join(map(str, ids)))
    model = os.path.join(FIX, "m2_small")
    T = 20
    tg = tmp_path / "targets.txt"
    tg.write_text("40 33\n 299 33 20 150\n")     # unsorted, one repeated
    out = json.loads(run("score", "--model", model, "--tokens", str(f), "--json",
                         "--restart-ctx", str(T), "--targets", str(tg)).stdout)
    fl = out["failure"]
    assert fl["ctx"] == T
    assert [t["pos"] for t in fl["targets"]] == [20, 33, 40, 150, 299]
    lp = out["token_logprobs"]
    # the first 63 predictions are transformers' own (the fixture's logits)
    want = log_softmax(ref["logits"])[np.arange(63), ref["input_ids"][1:]]
    for t in fl["targets"]:
        p = t["pos"]
        assert t["stream_logprob"] == pytest.approx(lp[p - 1], abs=1e-6)
        if p < 64:
            assert t["stream_logprob"] == pytest.approx(want[p - 1], abs=1e-4)
        w = tmp_path / "w.txt"
        w.write_text(" ".join(map(str, ids[p - T: p + 1])))
        sep = json.loads(run("score", "--model", model, "--tokens", str(w), "--json").stdout)
        assert len(sep["token_logprobs"]) == T
        assert t["restart_logprob"] == pytest.approx(sep["token_logprobs"][-1], abs=1e-5)
    # target 20 restarts at position 0: the same tokens as the stream
    assert fl["targets"][0]["restart_logprob"] == pytest.approx(lp[19], abs=1e-5)
    # buckets [2^k, 2^(k+1)) of the targets' positions, sums and ratio
    got = {(b["start"], b["end"]): b for b in fl["buckets"]}
    assert sorted(got) == [(16, 32), (32, 64), (128, 256), (256, 512)]
    b = got[(32, 64)]
    ts = fl["targets"][1:3]
    assert b["n"] == 2
    assert b["stream_nll"] == pytest.approx(-sum(t["stream_logprob"] for t in ts), abs=1e-5)
    assert b["restart_nll"] == pytest.approx(-sum(t["restart_logprob"] for t in ts), abs=1e-5)
    assert b["ratio"] == pytest.approx(np.exp((b["stream_nll"] - b["restart_nll"]) / 2), rel=1e-6)
    assert b["stream_ppl"] == pytest.approx(np.exp(b["stream_nll"] / 2), rel=1e-6)
    # evenly spaced targets: K per bucket from the first power of two >= T (32),
    # lo + floor((i + 1/2) span / K); the last bucket is cut at n: [256, 300)
    ev = json.loads(run("score", "--model", model, "--tokens", str(f), "--json",
                        "--restart-ctx", str(T), "--targets-per-bucket", "4").stdout)["failure"]
    assert [t["pos"] for t in ev["targets"]] == [36, 44, 52, 60, 72, 88, 104, 120,
                                                   144, 176, 208, 240, 261, 272, 283, 294]
    assert [b["n"] for b in ev["buckets"]] == [4, 4, 4, 4]
    # text output lists the same buckets
    txt = run("score", "--model", model, "--tokens", str(f), "--restart-ctx", str(T),
              "--targets-per-bucket", "4", "--max-details", "0").stdout
    assert "# failure ratio" in txt and "# [256, 512) 4 " in txt


@pytest.mark.parametrize("args,code,needle", [
    (["--targets-per-bucket", "4"], 2, "need --restart-ctx"),
    (["--restart-ctx", "0"], 2, "--restart-ctx must be"),
    (["--restart-ctx", "8", "--targets", "T", "--targets-per-bucket", "2"], 2, "not both"),
    (["--restart-ctx", "8", "--targets", "T"], 1, "entry 1 ('7') is not a position in [8, 30)"),
    (["--state-every", "0"], 2, "--state-every must be"),
    (["--restart-ctx", "8", "--targets", "-", "--tokens", "-"], 2, "cannot both be stdin"),
])
def test_score_failure_and_state_usage(tmp_path, args, code, needle):
    f = tmp_path / "ids.txt"
    f.write_text(" ".join(str(i % 90) for i in range(30)))
    (tmp_path / "T").write_text("9 7 12")
    args = [str(tmp_path / "T") if a == "T" else a for a in args]
    p = run("score", "--model", os.path.join(FIX, "m2_small"), "--tokens", str(f), *args,
            check=False)
    assert p.returncode == code and needle in p.stderr, p.stderr
    assert p.stdout == ""


@pytest.mark.parametrize("text,needle", [
    ("1 2 96", "token 2 ('96') is not an id in [0, 96)"),
    ("1 -3 2", "token 1 ('-3')"),
    ("1 2 x", "token 2 ('x')"),
    ("1 2.5", "token 1 ('2.5')"),
    ("99999999999999999999", "token 0"),
    ("", "no tokens"),
])
def test_score_bad_ids(tmp_path, text, needle):
    f = tmp_path / "ids.txt"
    f.write_text(text)
    p = run("score", "--model", os.path.join(FIX, "m2_small"), "--tokens", str(f), check=False)
    assert p.returncode == 1
    assert needle in p.stderr, p.stderr
    assert p.stdout == ""


def test_score_bad_model_dirs(tmp_path):
    p = run("score", "--model", str(tmp_path), "--tokens", "-", input="1 2", check=False)
    assert p.returncode == 1 and "config.json" in p.stderr
    (tmp_path / "config.json").write_text('{"d_model": 64, "n_layer": 1, "vocab_size": 10,'
                                          ' "ssm_cfg": {"layer": "Mamba2"}}')
    p = run("score", "--model", str(tmp_path), "--tokens", "-", input="1 2", check=False)
    assert p.returncode == 1 and "no model.safetensors" in p.stderr
    (tmp_path / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{}")
    p = run("score", "--model", str(tmp_path), "--tokens", "-", input="1 2", check=False)
    assert p.returncode == 1 and "model.safetensors" in p.stderr and "past the end" in p.stderr


def test_usage_errors():
    assert run("score", check=False).returncode == 2
    assert run("score", "--model", "x", "--tokens", "y", "--chunk", "0", check=False).returncode == 2
    assert run("bench", "--random", "x", "--model", "y", check=False).returncode == 2
    assert run("no-such-command", check=False).returncode == 2
    assert run("--help").stdout.startswith("usage: recurd")


def test_bench_json_quick():
    out = json.loads(run("bench", "--model", os.path.join(FIX, "m1_small"), "--quick",
                         "--seconds", "0.2", "--json").stdout)
    names = [r["test"] for r in out["results"]]
    assert names == ["prefill c=256", "decode b=1", "decode b=32"]
    assert out["sgemm_peak_gflops"] > 0 and out["state_bytes"] > 0
    assert all(r["tok_s"] > 0 for r in out["results"])
    bad = run("bench", "--random", "mamba9", check=False)
    assert bad.returncode == 1 and "unknown shape" in bad.stderr


def test_soak_constant_memory():
    p = run("soak", "--model", os.path.join(FIX, "m2_small"), "--tokens", "30000",
            "--window", "2048")
    rows = [l.split() for l in p.stdout.splitlines() if l.strip() and l.split()[0].isdigit()]
    assert [int(r[0]) for r in rows] == [1024, 10240, 30000]
    assert len({r[2] for r in rows}) == 1  # allocator bytes live: identical
    assert len({r[3] for r in rows}) == 1  # state bytes: identical
    assert "ok: constant memory" in p.stdout


def test_version_reports_adequate_blas_kernels():
    # recurd re-executes itself when OpenBLAS picked kernels weaker than the
    # CPU runs (DESIGN.md); --check-blas fails if that did not work.
    p = run("version", "--check-blas")
    assert "OpenBLAS core=" in p.stdout


def test_version_respects_the_users_openblas_coretype():
    # Some hosts set OPENBLAS_CORETYPE because older OpenBLAS builds crash on
    # their CPU: that is the user's decision. recurd reports it, does not
    # re-execute over it, and --check-blas does not fail because of it, even
    # when the kernels asked for are weaker than the CPU's (Prescott: SSE3,
    # which every x86-64 CPU runs).
    env = {k: v for k, v in os.environ.items() if k != "RECUR_BLAS_REEXEC"}
    env["OPENBLAS_CORETYPE"] = "Prescott"
    p = subprocess.run([RECURD, "version", "--check-blas"], capture_output=True, text=True,
                       timeout=60, env=env)
    assert p.returncode == 0, p.stderr
    assert "OPENBLAS_CORETYPE=Prescott set by the user" in p.stdout, p.stdout
    assert "re-executed" not in p.stdout


@pytest.mark.parametrize("name", ["recur-sp", "recur-base"])
def test_shipped_models_score_like_transformers(name):
    """recurd score on the shipped bf16 checkpoints vs transformers' Mamba2ForCausalLM
    on the same weights (tests/fixtures/parity, made by train/parity.py)."""
    root = os.path.join(os.path.dirname(__file__), "..", "..")
    ref = read_safetensors(os.path.join(FIX, "..", "parity", name, "reference.safetensors"))
    ids = " ".join(map(str, ref["input_ids"]))
    out = json.loads(run("score", "--model", os.path.join(root, "models", name), "--tokens", "-",
                         "--json", input=ids).stdout)
    got = np.array(out["token_logprobs"])
    assert got.shape == ref["logprobs"].shape
    assert np.max(np.abs(got - ref["logprobs"])) < 1e-4


SHARED = os.environ.get("RECUR_SHARED", os.path.join(os.path.dirname(__file__), "..", "..", "..",
                                                     "shared"))


def test_text_scoring_uses_the_model_tokenizer(tmp_path):
    """score --text == score --tokens of `recurd tokenize` output."""
    root = os.path.join(os.path.dirname(__file__), "..", "..")
    model = os.path.join(root, "models", "recur-sp")
    text = tmp_path / "t.txt"
    text.write_text("It was late in the autumn of the year when the coach from London set "
                    "down a young man at the door of the old inn.\n" * 20)
    ids = run("tokenize", "--tokenizer", model, input=text.read_text()).stdout
    a = json.loads(run("score", "--model", model, "--text", str(text), "--json").stdout)
    b = json.loads(run("score", "--model", model, "--tokens", "-", "--json", input=ids).stdout)
    assert a["n_tokens"] == len(ids.split()) and a["token_logprobs"] == b["token_logprobs"]


@pytest.mark.skipif(not os.path.isdir(os.path.join(SHARED, "data", "gutenberg", "dev_eval")),
                    reason="../shared/data/gutenberg/dev_eval is absent")
def test_dev_eval_books_tokenize_like_hf():
    """Our tokenizer on the 12 held-out books (4.7M tokens) gives exactly the ids HF
    tokenizers gave on the GPU machine (hashes in tests/fixtures/tokenizer/recur-sp)."""
    import hashlib
    import lzma
    root = os.path.join(os.path.dirname(__file__), "..", "..")
    ref = json.load(open(os.path.join(FIX, "..", "tokenizer", "recur-sp", "dev_eval_ids.json")))
    for name, want in sorted(ref["books"].items()):
        text = lzma.open(os.path.join(SHARED, "data", "gutenberg", "dev_eval", name)).read()
        p = subprocess.run([RECURD, "tokenize", "--tokenizer",
                            os.path.join(root, "models", "recur-sp")], input=text,
                           capture_output=True, timeout=300)
        assert p.returncode == 0, p.stderr
        ids = np.array(p.stdout.split(), dtype=np.int64)
        assert len(ids) == want["n_ids"], name
        assert hashlib.sha256(ids.astype("<u2").tobytes()).hexdigest() == want["sha256_u16le"], name
