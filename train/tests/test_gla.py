"""GLA (train/gla.py): chunkwise form vs the token-by-token recurrence, state carrying,
numerical stability under strong decay, gradients into initial states, and the fla
checkpoint format."""
import json
import os

import pytest
import torch

import gla
from gla import GLAConfig, GLALM, gla_chunked

torch.set_grad_enabled(False)


def perturbed(cfg, seed=0, dtype=torch.float64, gate_bias=None):
    """A model with every parameter moved off its init, so a wrong index shows."""
    m = GLALM(cfg).init_weights(seed)
    g = torch.Generator().manual_seed(seed + 1)
    for name, p in m.named_parameters():
        r = torch.randn(p.shape, generator=g)
        if "norm" in name:
            p.copy_(1 + 0.2 * r)
        elif name.endswith("gk_proj.1.bias"):
            p.copy_(r * 2 if gate_bias is None else gate_bias + r)
        elif "embeddings" in name:
            p.copy_(r)
        else:
            p.add_(0.5 * p.std() * r)
    return m.to(dtype).eval()


def rand_states(cfg, b, seed, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(b, cfg.conv_window, cfg.conv_dim, generator=g).to(dtype),
             torch.randn(b, cfg.num_heads, cfg.head_k, cfg.head_v, generator=g).to(dtype))
            for _ in range(cfg.num_hidden_layers)]


def run_steps(m, ids, states):
    outs = []
    for t in range(ids.shape[1]):
        lg, states = m.step(ids[:, t], states)
        outs.append(lg)
    return torch.stack(outs, 1), states


def close_states(a, b, tol):
    for (c1, s1), (c2, s2) in zip(a, b):
        assert c1.shape == c2.shape and s1.shape == s2.shape
        assert torch.allclose(c1.double(), c2.double(), atol=tol, rtol=tol)
        assert torch.allclose(s1.double(), s2.double(), atol=tol, rtol=tol), \
            (s1.double() - s2.double()).abs().max()


CFGS = [
    dict(hidden_size=32, num_hidden_layers=2, vocab_size=50, num_heads=2, chunk_size=16, sub_chunk=4),
    dict(hidden_size=32, num_hidden_layers=2, vocab_size=50, num_heads=4, chunk_size=8, sub_chunk=8,
         use_short_conv=False, tie_word_embeddings=False),
    dict(hidden_size=48, num_hidden_layers=1, vocab_size=33, num_heads=3, expand_k=1.0, expand_v=2.0,
         conv_size=3, chunk_size=64, sub_chunk=16, hidden_ratio=2, clamp_min=-0.5),
    dict(hidden_size=32, num_hidden_layers=2, vocab_size=40, num_heads=2, chunk_size=12, sub_chunk=3,
         tie_word_embeddings=False, intermediate_size=40),
]


def naive(q, k, v, g, S):
    """fla's naive recurrence (per head, state dk x dv), q already scaled."""
    o = []
    for t in range(q.shape[2]):
        S = torch.exp(g[:, :, t])[..., None] * S + k[:, :, t, :, None] * v[:, :, t, None, :]
        o.append((q[:, :, t, :, None] * S).sum(-2))
    return torch.stack(o, 2), S


@pytest.mark.parametrize("chunk,sub", [(16, 4), (16, 16), (8, 1), (64, 16), (12, 4)])
@pytest.mark.parametrize("strong", [False, True])
def test_scan_equals_naive(chunk, sub, strong):
    g0 = torch.Generator().manual_seed(chunk * 100 + sub)
    b, h, T, dk, dv = 2, 3, 45, 5, 7
    q, k = (torch.randn(b, h, T, dk, generator=g0, dtype=torch.float64) for _ in range(2))
    v = torch.randn(b, h, T, dv, generator=g0, dtype=torch.float64)
    x = torch.randn(b, h, T, dk, generator=g0, dtype=torch.float64) * (40 if strong else 2)
    g = torch.nn.functional.logsigmoid(x - (30 if strong else 0)) / (1 if strong else 16)
    S0 = torch.randn(b, h, dk, dv, generator=g0, dtype=torch.float64)
    o, S = gla_chunked(q, k, v, g, S0, chunk, sub)
    o2, S2 = naive(q, k, v, g, S0)
    assert torch.allclose(o, o2, atol=1e-10, rtol=1e-10), (o - o2).abs().max()
    assert torch.allclose(S, S2, atol=1e-10, rtol=1e-10)


def test_scan_float32_strong_decay_is_finite_and_accurate():
    """Cumulative log decays of -1e4 inside a chunk: a factorisation exp(B_t) * exp(-B_s)
    would overflow float32; every exp() argument here is <= 0."""
    g0 = torch.Generator().manual_seed(7)
    b, h, T, dk, dv = 1, 2, 200, 4, 6
    q, k = (torch.randn(b, h, T, dk, generator=g0, dtype=torch.float64) for _ in range(2))
    v = torch.randn(b, h, T, dv, generator=g0, dtype=torch.float64)
    g = -torch.rand(b, h, T, dk, generator=g0, dtype=torch.float64) * 300
    g[..., ::3, :] = -1e-3                                   # some slow steps between
    S0 = torch.randn(b, h, dk, dv, generator=g0, dtype=torch.float64)
    o2, S2 = naive(q, k, v, g, S0)
    args = [t.float().requires_grad_() for t in (q, k, v, g, S0)]
    with torch.enable_grad():
        o, S = gla_chunked(*args, chunk=64, sub=16)
        (o.square().sum() + S.sum()).backward()
    assert torch.isfinite(o).all() and torch.isfinite(S).all()
    assert all(torch.isfinite(a.grad).all() for a in args)
    assert (o.double() - o2).abs().max() < 2e-5 * (1 + o2.abs().max())
    assert (S.double() - S2).abs().max() < 2e-5 * (1 + S2.abs().max())


@pytest.mark.parametrize("kw", CFGS)
@pytest.mark.parametrize("with_init", [False, True])
def test_chunked_equals_recurrence(kw, with_init):
    cfg = GLAConfig(**kw)
    m = perturbed(cfg, seed=3)
    T = 37  # no chunk size above divides it
    ids = torch.randint(0, cfg.vocab_size, (2, T), generator=torch.Generator().manual_seed(5))
    init = rand_states(cfg, 2, 9) if with_init else None
    lg, st = m(ids, init)
    zero = [(c.double(), s.double()) for c, s in m.zero_states(2)]
    lg2, st2 = run_steps(m, ids, init if with_init else zero)
    assert lg.dtype == torch.float64 and lg.shape == (2, T, cfg.vocab_size)
    assert torch.allclose(lg, lg2, atol=1e-9, rtol=1e-9), (lg - lg2).abs().max()
    close_states(st, st2, 1e-9)


@pytest.mark.parametrize("chunk,sub", [(1, 1), (4, 2), (7, 7), (64, 16), (32, 1)])
def test_chunk_size_does_not_change_function(chunk, sub):
    kw = dict(CFGS[0], chunk_size=chunk, sub_chunk=sub)
    m = perturbed(GLAConfig(**kw), seed=4)
    ref = perturbed(GLAConfig(**dict(kw, chunk_size=16, sub_chunk=4)), seed=4)
    ids = torch.randint(0, 50, (3, 29), generator=torch.Generator().manual_seed(1))
    init = rand_states(m.cfg, 3, 2)
    a, sa = m(ids, init)
    b, sb = ref(ids, init)
    assert torch.allclose(a, b, atol=1e-9, rtol=1e-9)
    close_states(sa, sb, 1e-9)


@pytest.mark.parametrize("kw", CFGS[:2])
def test_split_and_carry_equals_one_pass(kw):
    cfg = GLAConfig(**kw)
    m = perturbed(cfg, seed=6)
    ids = torch.randint(0, cfg.vocab_size, (2, 50), generator=torch.Generator().manual_seed(2))
    full, st_full = m(ids)
    for cut in (1, 2, 3, 17, 49):
        a, st = m(ids[:, :cut])
        b, st = m(ids[:, cut:], st)
        assert torch.allclose(torch.cat([a, b], 1), full, atol=1e-9, rtol=1e-9)
        close_states(st, st_full, 1e-9)


def test_gradients_flow_through_initial_states():
    cfg = GLAConfig(**CFGS[0])
    m = perturbed(cfg, seed=1, dtype=torch.float32)
    ids = torch.randint(0, cfg.vocab_size, (2, 20))
    init = [(c.float().requires_grad_(), s.float().requires_grad_()) for c, s in rand_states(cfg, 2, 1)]
    with torch.enable_grad():
        lg, st = m(ids, init)
        (lg.logsumexp(-1).mean() + sum(s.sum() for _, s in st)).backward()
    for c, s in init:
        assert c.grad is not None and s.grad is not None
        assert c.grad.abs().sum() > 0 and s.grad.abs().sum() > 0
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in m.parameters())


def test_float32_close_to_float64_with_strong_gates():
    cfg = GLAConfig(**CFGS[0])
    m64 = perturbed(cfg, seed=8, gate_bias=-60.0)   # gk around -3.75 per token
    m32 = perturbed(cfg, seed=8, dtype=torch.float32, gate_bias=-60.0)
    ids = torch.randint(0, cfg.vocab_size, (2, 300), generator=torch.Generator().manual_seed(3))
    a, _ = m64(ids)
    b, _ = m32(ids)
    assert torch.isfinite(b).all()
    assert (torch.log_softmax(a, -1) - torch.log_softmax(b.double(), -1)).abs().max() < 2e-3


def test_causal():
    cfg = GLAConfig(**CFGS[0])
    m = perturbed(cfg, seed=11, dtype=torch.float32)
    ids = torch.randint(0, cfg.vocab_size, (1, 40), generator=torch.Generator().manual_seed(4))
    a, _ = m(ids)
    ids2 = ids.clone()
    ids2[0, 23] = (ids2[0, 23] + 1) % cfg.vocab_size
    b, _ = m(ids2)
    assert torch.equal(a[:, :23], b[:, :23])
    assert not torch.allclose(a[:, 23:], b[:, 23:])


def test_bf16_autocast_runs_with_fp32_states():
    cfg = GLAConfig(**CFGS[0])
    m = perturbed(cfg, seed=2, dtype=torch.float32)
    ids = torch.randint(0, cfg.vocab_size, (2, 33))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        lg, st = m(ids)
    assert all(c.dtype == torch.float32 and s.dtype == torch.float32 for c, s in st)
    ref, _ = m(ids)
    assert (torch.log_softmax(lg.float(), -1) - torch.log_softmax(ref, -1)).abs().max() < 0.3


# ---------------------------------------------------------- fla checkpoints
FLA_NAMES = ["model.embeddings.weight", "model.norm.weight"] + [
    f"model.layers.0.{n}" for n in (
        "attn_norm.weight", "attn.q_proj.weight", "attn.k_proj.weight", "attn.v_proj.weight",
        "attn.g_proj.weight", "attn.gk_proj.0.weight", "attn.gk_proj.1.weight",
        "attn.gk_proj.1.bias", "attn.o_proj.weight", "attn.g_norm_swish_gate.weight",
        "attn.q_conv1d.weight", "attn.k_conv1d.weight", "attn.v_conv1d.weight",
        "mlp_norm.weight", "mlp.gate_proj.weight", "mlp.up_proj.weight", "mlp.down_proj.weight")]


def test_fla_names_shapes_and_config(tmp_path):
    import stio
    cfg = GLAConfig(hidden_size=64, num_hidden_layers=1, vocab_size=100, num_heads=4)
    m = GLALM(cfg).init_weights(0)
    gla.save_fla(m, str(tmp_path), training_context=512)
    sd = stio.load(str(tmp_path / "model.safetensors"))
    assert sorted(sd) == sorted(FLA_NAMES)
    assert all(v.dtype == torch.bfloat16 for v in sd.values())
    assert sd["model.layers.0.attn.q_conv1d.weight"].shape == (32, 1, 4)
    assert sd["model.layers.0.attn.v_conv1d.weight"].shape == (64, 1, 4)
    assert sd["model.layers.0.attn.gk_proj.0.weight"].shape == (16, 64)
    assert sd["model.layers.0.attn.gk_proj.1.weight"].shape == (32, 16)
    assert sd["model.layers.0.attn.g_norm_swish_gate.weight"].shape == (16,)
    assert sd["model.layers.0.mlp.gate_proj.weight"].shape == (256, 64)   # 256*ceil(170/256)
    c = json.load(open(tmp_path / "config.json"))
    assert c["model_type"] == "gla" and c["architectures"] == ["GLAForCausalLM"]
    assert c["training_context"] == 512 and c["tie_word_embeddings"] is True
    assert c["intermediate_size"] == 256 and c["use_short_conv"] is True and c["fuse_norm"] is True
    assert c["use_gk"] is True and c["use_gv"] is False and c["feature_map"] is None
    assert c["hidden_act"] == "swish" and c["attn"] is None and c["num_kv_heads"] is None


@pytest.mark.parametrize("kw", CFGS[:2])
def test_save_load_roundtrip(tmp_path, kw):
    cfg = GLAConfig(**kw)
    m = perturbed(cfg, seed=5, dtype=torch.float32)
    gla.save_fla(m, str(tmp_path))
    m2 = gla.load_fla(str(tmp_path), chunk_size=cfg.chunk_size, sub_chunk=cfg.sub_chunk)
    assert m2.cfg == cfg
    if not cfg.tie_word_embeddings:
        assert "lm_head.weight" in __import__("stio").load(str(tmp_path / "model.safetensors"))
    m.load_state_dict({k: v.to(torch.bfloat16).float() for k, v in m.state_dict().items()})
    ids = torch.randint(0, cfg.vocab_size, (1, 30))
    assert torch.equal(m(ids)[0], m2(ids)[0])


def test_from_fla_rejects_unsupported():
    c = GLAConfig(hidden_size=32, num_hidden_layers=1, vocab_size=10, num_heads=2).to_fla()
    for k, v in (("use_gv", True), ("feature_map", "relu"), ("num_kv_heads", 1),
                 ("use_output_gate", False), ("model_type", "mamba2")):
        with pytest.raises(ValueError):
            GLAConfig.from_fla(dict(c, **{k: v}))
    # fla defaults when keys are absent: no short conv, untied, intermediate from hidden_ratio
    d = GLAConfig.from_fla({"hidden_size": 32, "num_hidden_layers": 1, "vocab_size": 10})
    assert d.use_short_conv is False and d.tie_word_embeddings is False
    assert d.intermediate_size == 256 and d.num_heads == 4


def test_fla_intermediate_size():
    assert gla.fla_intermediate_size(256, 4) == 768
    assert gla.fla_intermediate_size(320, 4) == 1024
    assert gla.fla_intermediate_size(2048, 4) == 5632


# ------------------------------------------------- the C engine (recurd score)
RECURD = os.environ.get("RECURD_BIN", os.path.join(os.path.dirname(os.path.dirname(
    os.path.dirname(os.path.abspath(__file__)))), "build", "server", "recurd"))


@pytest.mark.parametrize("kw", [
    dict(hidden_size=64, num_hidden_layers=2, vocab_size=300, num_heads=4),
    dict(hidden_size=64, num_hidden_layers=2, vocab_size=300, num_heads=4, use_short_conv=False,
         tie_word_embeddings=False),
    dict(hidden_size=48, num_hidden_layers=2, vocab_size=300, num_heads=3, expand_k=1.0,
         expand_v=2.0, conv_size=3, hidden_ratio=2, clamp_min=-0.5)])
def test_matches_recurd_engine(tmp_path, kw):
    """An fla checkpoint written by save_fla, scored by recurd's C engine (`recurd score
    --tokens`): the same per-token log-probs as GLALM in float32 (the engine's own GLA
    forward, written from fla's definition independently of this file)."""
    import subprocess

    import numpy as np

    import longeval
    if not os.access(RECURD, os.X_OK):
        pytest.skip(f"{RECURD} not built (set RECURD_BIN)")
    m = perturbed(GLAConfig(**kw), seed=3, dtype=torch.float32)
    m.load_state_dict({k: v.to(torch.bfloat16).float() for k, v in m.state_dict().items()})
    gla.save_fla(m, str(tmp_path), training_context=512)
    ids = torch.randint(0, kw["vocab_size"], (500,), generator=torch.Generator().manual_seed(1)).numpy()
    ids[250:] = ids[:250]                                 # a repeat: the state matters
    (tmp_path / "ids.txt").write_text(" ".join(map(str, ids)))
    r = subprocess.run([RECURD, "score", "--model", str(tmp_path), "--tokens",
                        str(tmp_path / "ids.txt"), "--json", "--chunk", "100"],
                       capture_output=True, text=True, timeout=120)
    if r.returncode and "gla" in (r.stderr + r.stdout).lower() and "unsupported" in r.stderr.lower():
        pytest.skip("this recurd build has no GLA: " + r.stderr[-200:])
    assert r.returncode == 0, r.stderr[-2000:]
    theirs = np.array(json.loads(r.stdout)["token_logprobs"], dtype=np.float64)
    ours = longeval.token_logprobs(m, ids, seg=128)
    assert len(theirs) == len(ours)
    assert np.abs(ours - theirs).max() < 2e-4, np.abs(ours - theirs).max()
