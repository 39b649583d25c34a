"""eval_books.py / eval_effrem.py end to end against tests/fake_recurd.py (the real
`recurd score --text` / `recurd effrem` come from the engine issue), the aggregation
arithmetic on hand-made inputs, and eval_books.py / eval_restart.py against the real
engine (skipped without a built recurd)."""
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


def test_eval_restart_through_the_engine(tmp_path):
    """Issue 17's failure ratio through the real `recurd score --restart-ctx`: the targets
    are failure_targets' (seed + book index), each restart reads EXACTLY ctx tokens (checked
    against a separate `recurd score` of x[t-ctx : t+1]), the ratio is exp(mean stream NLL -
    mean restart NLL) pooled token-weighted over books, and the state-std trace comes along."""
    from longeval import failure_targets
    recurd = _recurd()
    model = os.path.join(os.path.dirname(TRAIN), "models", "recur-sp")
    lic = "/usr/share/common-licenses/GPL-3"
    if not os.path.exists(os.path.join(model, "tokenizer.json")) or not os.path.exists(lic):
        pytest.skip("needs models/recur-sp and " + lic)
    text = open(lic).read()
    books = tmp_path / "books"
    books.mkdir()
    for i, sl in enumerate((slice(0, 9000), slice(12000, 22000))):
        with lzma.open(books / f"book{i:02d}.txt.xz", "wt") as f:
            f.write(text[sl])
    ctx, per, every = 64, 6, 512
    js, md, svg, std_svg = (tmp_path / x for x in ("r.json", "r.md", "r.svg", "s.svg"))
    cache = tmp_path / "cache.json"
    argv = ["--recurd", recurd, "--models", model, "--books", str(books), "--max-tokens", "1500",
            "--ctx", str(ctx), "--targets", str(per), "--seed", "5", "--state-every", str(every),
            "--md", str(md), "--json", str(js), "--svg", str(svg), "--std-svg", str(std_svg),
            "--cache", str(cache)]
    assert eval_restart.main(argv) == 0
    out = json.load(open(js))
    rows = out["per_book"]["recur-sp"]
    assert all("targets" not in r for r in rows)
    # the cache keeps each book's targets
    cached = json.load(open(cache))
    targets = {(k.split("|")[1], r["lo"]): r["targets"] for k, v in cached.items() if k != "key"
               for r in v["rows"]}
    want = {}
    for i in range(2):
        name = f"book{i:02d}.txt.xz"
        with lzma.open(books / name, "rb") as f:
            ids = [int(x) for x in subprocess.run([recurd, "tokenize", "--tokenizer", model],
                                                  input=f.read(), capture_output=True,
                                                  check=True).stdout.split()][:1500]
        tg = failure_targets(len(ids), ctx, per, 5 + i)
        got = {(r["lo"], r["hi"]): r for r in rows if r["book"] == name}
        assert sorted(got) == sorted(tg)
        for k, ts in tg.items():
            assert targets[(name, k[0])] == ts and got[k]["n"] == len(ts)
            want.setdefault(f"[{k[0]}, {k[1]})", []).append(got[k])
        # one target's restart, scored on its own: exactly ctx tokens before it
        (lo, hi), ts = sorted(tg.items())[-1]
        t = ts[0]
        w = tmp_path / "w.txt"
        w.write_text(" ".join(map(str, ids[t - ctx: t + 1])))
        sep = json.loads(subprocess.run([recurd, "score", "--model", model, "--tokens", str(w),
                                         "--json"], capture_output=True, check=True).stdout)
        single = json.loads(subprocess.run(
            [recurd, "score", "--model", model, "--tokens", str(w), "--json", "--restart-ctx",
             str(ctx), "--targets", "-"], input=str(ctx).encode(), capture_output=True,
            check=True).stdout)["failure"]["targets"][0]
        assert single["pos"] == ctx
        assert single["restart_logprob"] == pytest.approx(sep["token_logprobs"][-1], abs=1e-5)
    pooled = out["pooled"]["recur-sp"]
    assert sorted(pooled) == sorted(want) and len(pooled) >= 4
    for b, rs in want.items():
        n = sum(r["n"] for r in rs)
        d = (sum(r["stream_nll"] for r in rs) - sum(r["restart_nll"] for r in rs)) / n
        assert pooled[b]["n"] == n and pooled[b]["books"] == 2
        assert pooled[b]["ratio"] == pytest.approx(math.exp(d))
    # the first bucket's targets are read with no more than ctx tokens anyway: ratio ~ 1
    assert pooled["[64, 128)"]["ratio"] == pytest.approx(1.0, abs=0.2)
    stds = out["state_std_mean"]["recur-sp"]
    assert [p["pos"] for p in stds][:3] == [1, 2, 4] and 512 in [p["pos"] for p in stds]
    assert all(p["std"] > 0 for p in stds)
    text_md = md.read_text()
    assert f"exactly the {ctx} tokens" in text_md and "| [64, 128) |" in text_md
    assert "## State standard deviation" in text_md
    for f in (svg, std_svg):
        s = f.read_text()
        assert s.startswith("<svg") and "training context 64" in s and s.count("<polyline") == 1
    # a re-run with the same settings comes from the cache: the binary is never called
    argv[1] = "/nonexistent/recurd"
    assert eval_restart.main(argv) == 0
    assert json.load(open(js))["pooled"] == out["pooled"]


def _recurd():
    p = os.environ.get("RECURD") or os.path.join(os.path.dirname(TRAIN), "build", "server", "recurd")
    if not os.access(p, os.X_OK):
        pytest.skip(f"no recurd binary at {p} (build the engine, or set RECURD)")
    return p


def _tiny_model_dir(d, seed, scale, training_context=None):
    """A small Mamba-2 with every parameter perturbed by scale * N(0, 1), exported by
    checkpoint.py (bf16) with a byte-level tokenizer.json, for the real engine."""
    import torch
    import checkpoint
    import corpus
    from model import Mamba2LM, ModelConfig
    cfg = ModelConfig(d_model=64, n_layer=2, vocab_size=300, d_state=16, headdim=16, chunk_size=16)
    m = Mamba2LM(cfg).init_weights(seed)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(scale * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    checkpoint.save_state_spaces(m, d, training_context=training_context)
    corpus.ByteTokenizer.write(os.path.join(d, "tokenizer.json"))
    return d


def test_eval_books_ids_against_engine(tmp_path):
    """The real C engine scores a checkpoint exported by checkpoint.py; eval_books.py's
    aggregate must equal longeval.py's on the same ids and weights."""
    import numpy as np
    import checkpoint
    import longeval
    recurd = _recurd()
    d = _tiny_model_dir(str(tmp_path / "recur-x"), seed=3, scale=0.05)
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


def test_eval_restart_matches_pytorch(tmp_path):
    """The failure ratio and the state std through the C engine (`recurd score
    --restart-ctx/--state-every`, via eval_restart.py) equal train/longeval.py's PyTorch
    failure_book on the same weights; T comes from config.json's training_context."""
    import numpy as np
    import checkpoint
    import longeval
    recurd = _recurd()
    # perturbed enough that predictions depend on context: a restart after 40 tokens
    # instead of 48 changes bucket ratios by several percent (so the test can fail)
    d = _tiny_model_dir(str(tmp_path / "recur-x"), seed=4, scale=0.3, training_context=48)
    assert json.load(open(os.path.join(d, "config.json")))["training_context"] == 48
    rng = np.random.default_rng(1)
    books = tmp_path / "books"
    books.mkdir()
    words = ["the ", "state ", "passes ", "on ", "and ", "a ", "river ", "runs ", ".\n"]
    for i, n in enumerate((900, 1300)):
        with lzma.open(books / f"book{i:02d}.txt.xz", "wt") as f:
            f.write("".join(rng.choice(words, n)))
    js = tmp_path / "r.json"
    assert eval_restart.main(["--recurd", recurd, "--models", d, "--books", str(books),
                              "--max-tokens", "3000", "--targets", "10", "--seed", "2",
                              "--state-every", "512", "--md", str(tmp_path / "r.md"),
                              "--json", str(js)]) == 0
    out = json.load(open(js))
    assert out["ctx"] == 48
    mb = checkpoint.load_dir(d)   # the bf16 weights the engine read, in float32
    ref = []
    for i in range(2):
        with lzma.open(books / f"book{i:02d}.txt.xz", "rb") as f:
            ids = [int(x) for x in subprocess.run([recurd, "tokenize", "--tokenizer", d],
                                                  input=f.read(), capture_output=True,
                                                  check=True).stdout.split()][:3000]
        ref.append(longeval.failure_book(mb, ids, 48, 10, 2 + i, seg=512))
    want = {f"[{r['start']}, {r['end']})": r for r in longeval.pool_failure(ref)}
    got = out["pooled"]["recur-x"]
    assert sorted(got) == sorted(want) and len(got) >= 5
    for b, w in want.items():
        assert got[b]["n"] == w["n"]
        assert got[b]["stream_ppl"] == pytest.approx(w["stream_ppl"], rel=1e-3)
        assert got[b]["restart_ppl"] == pytest.approx(w["restart_ppl"], rel=1e-3)
        assert got[b]["ratio"] == pytest.approx(w["ratio"], abs=2e-4)
    # state std: the engine's population std over all layers vs PyTorch's per-layer
    # (unbiased) std, compared per layer at the positions both report
    per_book = [{p: s for p, s in r["state_std"]} for r in ref]
    with lzma.open(books / "book01.txt.xz", "rb") as f:
        text = f.read()
    ids1 = tmp_path / "ids1.txt"
    ids1.write_text(subprocess.run([recurd, "tokenize", "--tokenizer", d], input=text,
                                   capture_output=True, check=True).stdout.decode())
    eng = json.loads(subprocess.run([recurd, "score", "--model", d, "--tokens", str(ids1),
                                     "--json", "--max-details", "0", "--state-every", "512"],
                                    capture_output=True, check=True).stdout)["state_std"]
    eng = {p["pos"]: p["layers"] for p in eng}
    common = sorted(set(eng) & set(per_book[1]))
    assert len(common) >= 8
    for p in common:
        assert eng[p] == pytest.approx(per_book[1][p], rel=2e-3), p


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
