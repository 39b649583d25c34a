"""eval_books.py / eval_effrem.py / eval_restart.py end to end against tests/fake_recurd.py (the real
`recurd score --text` / `recurd effrem` come from the engine issue), plus the
aggregation arithmetic on hand-made inputs."""
import json
import lzma
import math
import os
import subprocess
import sys

import pytest

from conftest import HERE, TRAIN
import eval_books
import eval_effrem
import eval_restart
import export


def make_books(d, lengths):
    os.makedirs(d, exist_ok=True)
    for i, n in enumerate(lengths):
        with lzma.open(os.path.join(d, f"book{i:02d}.txt.xz"), "wt") as f:
            f.write("x" * n)


def make_model(d):
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump({"d_model": 1}, f)
    with open(os.path.join(d, "README.md"), "w") as f:
        f.write("# card\n\n" + export.EVAL_BEGIN + "\nold\n" + export.EVAL_END + "\n\n## Licence\n")


def test_aggregate_and_targets():
    per = {"a": {"buckets": [{"start": 128, "end": 256, "n": 10, "ppl": 10.0},
                             {"start": 131072, "end": 262144, "n": 100, "ppl": 10.4}]},
           "b": {"buckets": [{"start": 128, "end": 256, "n": 30, "ppl": 20.0},
                             {"start": 131072, "end": 262144, "n": 50, "ppl": 21.0}]}}
    rows = eval_books.aggregate(per)
    r0 = rows[0]
    assert r0["ppl_mean"] == pytest.approx(15.0)
    assert r0["ppl_pooled"] == pytest.approx(math.exp((10 * math.log(10) + 30 * math.log(20)) / 40))
    t = eval_books.check_targets(rows, 256)
    assert t["ref_bucket"] == [128, 256]
    assert t["last_ratio"] == pytest.approx((10.4 + 21.0) / 2 / 15.0)
    assert t["ok"] is True
    per["b"]["buckets"][1]["ppl"] = 30.0
    assert eval_books.check_targets(eval_books.aggregate(per), 256)["ok"] is False
    assert eval_books.check_targets(rows, 512)["ok"] is False  # no bucket ending at 512


def test_eval_books_end_to_end(tmp_path):
    books = tmp_path / "books"
    make_books(str(books), [1_100_000, 1_200_003])   # ~275k / 300k "tokens"
    for m in ("recur-base", "recur-sp"):
        make_model(str(tmp_path / "models" / m))
    md, svg = tmp_path / "docs" / "t.md", tmp_path / "docs" / "p.svg"
    cache = tmp_path / "cache.json"
    models = f"{tmp_path}/models/recur-base,{tmp_path}/models/recur-sp"
    argv = ["--recurd", os.path.join(HERE, "fake_recurd.py"), "--models", models,
            "--books", str(books), "--ctx", "256", "--md", str(md), "--svg", str(svg),
            "--cache", str(cache), "--update-cards", "--json", str(tmp_path / "agg.json")]
    assert eval_books.main(argv) == 0
    agg = json.load(open(tmp_path / "agg.json"))
    assert agg["targets"]["recur-sp"]["ok"] is True
    assert agg["targets"]["recur-base"]["ok"] is False
    assert agg["targets"]["recur-base"]["worst_ratio"] > 2
    sp = {(r["start"], r["end"]): r for r in agg["aggregate"]["recur-sp"]}
    # book lengths differ by 3 mod 7 -> per-book offsets 0.1*(len%7); mean of the two
    off = ((1_100_000 % 7) + (1_200_003 % 7)) * 0.1 / 2
    assert sp[(131072, 262144)]["ppl_mean"] == pytest.approx(19.5 + off)
    assert sp[(131072, 262144)]["books"] == 2
    text = md.read_text()
    assert "[131072, 262144)" in text and "within 1.05x" in text and "NOT within" in text
    s = svg.read_text()
    assert s.startswith("<svg") and "training context 256" in s and s.count("<polyline") == 2
    card = (tmp_path / "models" / "recur-sp" / "README.md").read_text()
    assert "old" not in card and "recurd score --text" in card and "## Licence" in card
    # a re-run uses the cache: a broken binary is never called
    argv[1] = "/nonexistent/recurd"
    assert eval_books.main(argv) == 0


def test_eval_books_reports_engine_failure(tmp_path):
    make_books(str(tmp_path / "books"), [1000])
    make_model(str(tmp_path / "m"))
    with pytest.raises(RuntimeError, match="failed"):
        eval_books.main(["--recurd", "false", "--models", str(tmp_path / "m"),
                         "--books", str(tmp_path / "books"), "--md", str(tmp_path / "x.md"),
                         "--svg", str(tmp_path / "x.svg")])


def test_eval_effrem_end_to_end(tmp_path):
    books = tmp_path / "books"
    make_books(str(books), [50_000, 60_001, 70_002])
    for m in ("recur-base", "recur-sp"):
        make_model(str(tmp_path / m))
    md, svg = tmp_path / "e.md", tmp_path / "e.svg"
    assert eval_effrem.main(["--recurd", os.path.join(HERE, "fake_recurd.py"),
                             "--models", f"{tmp_path}/recur-base,{tmp_path}/recur-sp",
                             "--books", str(books), "--T", "256,1024", "--points", "4",
                             "--md", str(md), "--svg", str(svg)]) == 0
    text = md.read_text()
    assert "T = 256:" in text and "T = 1024:" in text
    # t=0 row: base 0.3 + mean over books of (len%3)*0.01 = (2+2+1)/3*0.01
    off = ((50_000 % 3) + (60_001 % 3) + (70_002 % 3)) / 3 * 0.01
    assert f"| 0 | 0.000 | {0.3 + off:.4f} | {0.03 + off:.4f} |" in text
    assert svg.read_text().count("<polyline") == 4


def test_eval_restart_exact_ctx(tmp_path, monkeypatch):
    """Issue 17's baseline: for each sampled target t (failure_targets) the restart reads
    EXACTLY ctx tokens x[t-ctx:t] from the zero state (every window handed to recurd has
    ctx+1 tokens), the stream reads the whole book (its log-prob index t-1), and the ratio
    is exp(mean stream NLL - mean restart NLL) pooled token-weighted over books. The fake's
    log-prob of the j-th prediction is -(1 + 0.001 j), so stream - restart NLL at t is
    0.001 (t - ctx) exactly."""
    from longeval import failure_targets
    ctx, per, lengths = 64, 8, (700, 1500)
    make_books(str(tmp_path / "books"), lengths)
    make_model(str(tmp_path / "recur-base"))
    log = tmp_path / "calls.log"
    monkeypatch.setenv("FAKE_RECURD_LOG", str(log))
    js = tmp_path / "r.json"
    assert eval_restart.main(["--recurd", os.path.join(HERE, "fake_recurd.py"),
                              "--models", str(tmp_path / "recur-base"), "--books", str(tmp_path / "books"),
                              "--ctx", str(ctx), "--targets", str(per), "--seed", "5",
                              "--md", str(tmp_path / "r.md"), "--json", str(js)]) == 0
    out = json.load(open(js))
    rows = out["per_book"]["recur-base"]
    want_t = {}
    for i, n in enumerate(lengths):
        tg = failure_targets(n, ctx, per, 5 + i)
        got = {(r["lo"], r["hi"]): r for r in rows if r["book"] == f"book{i:02d}.txt.xz"}
        assert sorted(got) == sorted(tg)
        for k, ts in tg.items():
            assert got[k]["targets"] == ts and got[k]["n"] == len(ts)
            assert all(ctx <= t < n for t in ts)
            assert got[k]["stream_nll"] - got[k]["restart_nll"] == pytest.approx(
                sum(0.001 * (t - ctx) for t in ts))
            want_t.setdefault(f"[{k[0]}, {k[1]})", []).extend(ts)
    assert sum(len(ts) for ts in tg.values()) > 2 * per      # several buckets, several targets
    calls = [int(x) for x in log.read_text().split()]
    streams = [c for c in calls if c in lengths]
    windows = [c for c in calls if c not in lengths]
    assert sorted(streams) == sorted(lengths)                # one stream call per book
    assert windows and all(c == ctx + 1 for c in windows), set(windows)
    assert len(windows) == sum(r["n"] for r in rows)
    pooled = out["pooled"]["recur-base"]
    assert sorted(pooled) == sorted(want_t)
    for b, ts in want_t.items():
        assert pooled[b]["n"] == len(ts)
        assert pooled[b]["ratio"] == pytest.approx(math.exp(sum(0.001 * (t - ctx) for t in ts) / len(ts)))
    md = (tmp_path / "r.md").read_text()
    assert f"exactly the {ctx} tokens" in md and "| [64, 128) |" in md


def _recurd():
    p = os.environ.get("RECURD") or os.path.join(os.path.dirname(TRAIN), "build", "server", "recurd")
    if not os.access(p, os.X_OK):
        pytest.skip(f"no recurd binary at {p} (build the engine, or set RECURD)")
    return p


def test_eval_books_ids_against_engine(tmp_path):
    """The real C engine scores a checkpoint exported by checkpoint.py; eval_books.py's
    aggregate must equal longeval.py's on the same ids and weights."""
    import numpy as np
    import torch
    import checkpoint
    import corpus
    import longeval
    from model import Mamba2LM, ModelConfig
    recurd = _recurd()
    cfg = ModelConfig(d_model=64, n_layer=2, vocab_size=300, d_state=16, headdim=16, chunk_size=16)
    m = Mamba2LM(cfg).init_weights(3)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    d = str(tmp_path / "recur-x")
    checkpoint.save_state_spaces(m, d)
    corpus.ByteTokenizer.write(os.path.join(d, "tokenizer.json"))
    ids_dir = tmp_path / "ids"
    ids_dir.mkdir()
    rng = np.random.default_rng(0)
    books = [rng.integers(0, 300, n).astype("<u2") for n in (3000, 4100)]
    for i, b in enumerate(books):
        b.tofile(str(ids_dir / f"book{i:02d}.u16"))
    assert eval_books.main(["--recurd", recurd, "--models", d, "--ids", str(ids_dir), "--ctx", "256",
                            "--md", str(tmp_path / "t.md"), "--svg", str(tmp_path / "p.svg"),
                            "--json", str(tmp_path / "agg.json")]) == 0
    agg = json.load(open(tmp_path / "agg.json"))["aggregate"]["recur-x"]
    mb = checkpoint.load_dir(d)   # the bf16 weights the engine read, in float32
    want = longeval.aggregate([longeval.bucket_stats(longeval.token_logprobs(mb, b)) for b in books])
    assert [(r["start"], r["end"]) for r in agg] == [(r["start"], r["end"]) for r in want]
    for g, w in zip(agg, want):
        assert g["n"] == w["n"]
        assert g["ppl_mean"] == pytest.approx(w["ppl_mean"], rel=1e-4)
        assert g["ppl_pooled"] == pytest.approx(w["ppl_pooled"], rel=1e-4)


def test_horizons_from_weights(tmp_path, capsys):
    """train/horizons.py: 1 / (softplus(dt_bias) * exp(A_log)) per head, from a hand-made
    safetensors file (F32 and BF16 both)."""
    import struct
    import numpy as np
    import horizons

    dt = np.array([0.01, 0.1, 0.001], dtype=np.float32)
    bias = np.log(np.expm1(dt)).astype(np.float32)             # softplus^-1
    A_log = np.log(np.array([2.0, 1.0, 4.0], dtype=np.float32))
    for dtype in ("F32", "BF16"):
        tensors = {"backbone.layers.0.mixer.dt_bias": bias, "backbone.layers.0.mixer.A_log": A_log}
        header, blob = {}, b""
        for k, v in tensors.items():
            raw = v.tobytes() if dtype == "F32" else (v.view(np.uint32) >> 16).astype(np.uint16).tobytes()
            header[k] = {"dtype": dtype, "shape": [3], "data_offsets": [len(blob), len(blob) + len(raw)]}
            blob += raw
        h = json.dumps(header).encode()
        d = tmp_path / dtype
        d.mkdir()
        (d / "model.safetensors").write_bytes(struct.pack("<Q", len(h)) + h + blob)
        got = horizons.horizons(str(d))[0]
        want = np.sort(1 / (dt * np.exp(A_log)))                  # 50, 10, 250
        tol = 1e-5 if dtype == "F32" else 2e-2                    # bf16 keeps 8 bits
        assert np.allclose(got, want, rtol=tol), (dtype, got, want)
    assert horizons.main(["--ctx", "40", str(tmp_path / "F32")]) == 0
    out = capsys.readouterr().out
    assert "| F32 | 3 | 50 | 250 | 2 | 1 |" in out, out
