"""Gated Linear Attention (Yang et al. 2024) language model in pure PyTorch, the same
function as fla's GLAForCausalLM (fla-org/flash-linear-attention, fla/models/gla) with the
options recurd serves: gk gate (low rank 16, logsigmoid / 16, optional clamp_min), output
gate through a per-head gated RMSNorm (fuse_norm), optional short convolutions, SwiGLU MLP.

Per block:   h = x + attn(attn_norm(x));  x = h + mlp(mlp_norm(h))
then:        logits = lm_head(norm(x))            (lm_head = embeddings when tied)
attn(u):
    q = q_proj(u), k = k_proj(u), v = v_proj(u)         key_dim | key_dim | value_dim
    (short conv) q, k, v = silu(causal depthwise conv(.)), kernel conv_size, no bias
    gk = logsigmoid(gk_proj.1(gk_proj.0(u))) / 16       (clamp_min if set)
    per head (H heads, dk = key_dim/H, dv = value_dim/H):
        S_t = diag(exp(gk_t)) S_{t-1} + k_t^T v_t       S: dk x dv
        o_t = (q_t * dk^-0.5) S_t
    o = RMSNorm_per_head(o) * g_norm_swish_gate.weight * swish(g_proj(u));  o_proj(o)
mlp(u) = down_proj(silu(gate_proj(u)) * up_proj(u))

Recurrent state of a layer: (conv, S), both float32:
    conv (B, conv_size-1, 2*key_dim + value_dim): the last conv_size-1 inputs of the q|k|v
         convolutions (projections before the conv), oldest first; (B, 0, ...) without
         short conv
    S    (B, H, dk, dv)   (fla's cache stores it V-first, (B, H, dv, dk), with state_v_first)
so the trainer's State Passing / TBTT / fitted-noise code treats it like a Mamba-2 layer's.

Two implementations of the same function:
    GLALM.forward  chunkwise form (GLA paper, section 4): inside a chunk of `chunk_size`
                   tokens the output is a masked quadratic form, across chunks the state is
                   carried. Numerically stable: every exp() argument is <= 0. Sub-chunks of
                   `sub_chunk` tokens use the cumulative decay at the end of the previous
                   sub-chunk as reference point between query and key; inside a sub-chunk
                   the pairwise decays exp(b_t - b_s) are computed exactly per dimension.
    GLALM.step     one token at a time, the plain recurrence (reference, sampling).
Parameter names are fla's, so a state_dict exports as is (no lm_head.weight when tied).
"""
import math
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from model import RMSNorm, _autocast_off, cdtype, detach_states  # noqa: F401 (re-export)

GATE_LOGIT_NORMALIZER = 16
GATE_LOW_RANK = 16


def fla_intermediate_size(hidden, hidden_ratio):
    """fla GatedMLP's default: 2/3 * hidden * ratio rounded up to a multiple of 256."""
    i = int(hidden * hidden_ratio * 2 / 3)
    return 256 * ((i + 255) // 256)


@dataclass
class GLAConfig:
    hidden_size: int = 256
    num_hidden_layers: int = 6
    vocab_size: int = 8192
    num_heads: int = 4
    expand_k: float = 0.5
    expand_v: float = 1.0
    hidden_ratio: int = 4
    intermediate_size: int = 0        # 0: fla's default from hidden_ratio
    use_short_conv: bool = True
    conv_size: int = 4
    clamp_min: float = None
    norm_eps: float = 1e-6
    tie_word_embeddings: bool = True
    bos_token_id: int = 0
    eos_token_id: int = 0
    chunk_size: int = 32              # speed knobs, not part of the function
    sub_chunk: int = 8

    def __post_init__(self):
        if not self.intermediate_size:
            self.intermediate_size = fla_intermediate_size(self.hidden_size, self.hidden_ratio)
        if self.key_dim % self.num_heads or self.value_dim % self.num_heads:
            raise ValueError("key_dim and value_dim must be multiples of num_heads")
        if self.chunk_size % self.sub_chunk:
            raise ValueError(f"chunk_size {self.chunk_size} not a multiple of sub_chunk {self.sub_chunk}")

    @property
    def key_dim(self):
        return int(self.hidden_size * self.expand_k)

    @property
    def value_dim(self):
        return int(self.hidden_size * self.expand_v)

    @property
    def head_k(self):
        return self.key_dim // self.num_heads

    @property
    def head_v(self):
        return self.value_dim // self.num_heads

    @property
    def conv_dim(self):
        return 2 * self.key_dim + self.value_dim

    @property
    def conv_window(self):
        return self.conv_size - 1 if self.use_short_conv else 0

    @property
    def n_vocab(self):
        return self.vocab_size

    # names the shared training code reads
    @property
    def n_layer(self):
        return self.num_hidden_layers

    @property
    def d_model(self):
        return self.hidden_size

    def to_dict(self):
        return asdict(self)

    def to_fla(self, training_context=None):
        """config.json as fla's GLAConfig writes it (GLAForCausalLM), plus our
        `training_context` (loaders ignore unknown keys)."""
        c = {"architectures": ["GLAForCausalLM"], "model_type": "gla",
             "attn": None, "attn_mode": "chunk", "attnres_block_size": None,
             "bos_token_id": self.bos_token_id, "clamp_min": self.clamp_min,
             "conv_size": self.conv_size, "dtype": "bfloat16", "elementwise_affine": True,
             "eos_token_id": self.eos_token_id, "expand_k": self.expand_k,
             "expand_v": self.expand_v, "feature_map": None, "fuse_cross_entropy": True,
             "fuse_linear_cross_entropy": False, "fuse_norm": True, "fuse_swiglu": True,
             "hidden_act": "swish", "hidden_ratio": self.hidden_ratio,
             "hidden_size": self.hidden_size, "initializer_range": 0.02,
             "intermediate_size": self.intermediate_size, "max_position_embeddings": 2048,
             "norm_eps": self.norm_eps, "num_heads": self.num_heads,
             "num_hidden_layers": self.num_hidden_layers, "num_kv_heads": None,
             "pad_token_id": None, "tie_word_embeddings": self.tie_word_embeddings,
             "use_cache": True, "use_gk": True, "use_gv": False, "use_l2warp": False,
             "use_output_gate": True, "use_short_conv": self.use_short_conv,
             "vocab_size": self.vocab_size}
        if training_context is not None:
            c["training_context"] = int(training_context)
        return c

    @classmethod
    def from_fla(cls, c, **over):
        if c.get("model_type", "gla") != "gla":
            raise ValueError(f"not a GLA config: model_type {c.get('model_type')}")
        unsupported = {"use_gk": True, "use_gv": False, "feature_map": None, "attn": None,
                       "use_output_gate": True, "fuse_norm": True, "hidden_act": "swish",
                       "elementwise_affine": True, "attnres_block_size": None}
        for k, want in unsupported.items():
            if c.get(k, want) != want:
                raise ValueError(f"GLA option {k}={c[k]!r} is not supported (only {want!r})")
        nkv = c.get("num_kv_heads")
        if nkv not in (None, c.get("num_heads", 4)):
            raise ValueError("num_kv_heads (grouped keys/values) is not supported")
        kw = dict(hidden_size=c["hidden_size"], num_hidden_layers=c["num_hidden_layers"],
                  vocab_size=c["vocab_size"], num_heads=c.get("num_heads", 4),
                  expand_k=c.get("expand_k", 0.5), expand_v=c.get("expand_v", 1.0),
                  hidden_ratio=c.get("hidden_ratio") or 4,
                  intermediate_size=c.get("intermediate_size") or 0,
                  use_short_conv=c.get("use_short_conv", False), conv_size=c.get("conv_size", 4),
                  clamp_min=c.get("clamp_min"), norm_eps=c.get("norm_eps", 1e-6),
                  tie_word_embeddings=c.get("tie_word_embeddings", False),
                  bos_token_id=c.get("bos_token_id", 1), eos_token_id=c.get("eos_token_id", 2))
        kw.update(over)
        return cls(**kw)


# ------------------------------------------------------------------ the scan
def _segsum(g):
    """g (..., c, d) -> (..., c(t), c(s), d): sum_{s<u<=t} g_u for s <= t, -inf above.
    A masked cumsum, not a difference of cumsums: the sums of same-sign terms keep full
    relative precision however large the cumulative decay gets."""
    c = g.shape[-2]
    x = g[..., :, None, :].expand(*g.shape[:-1], c, g.shape[-1])     # x[u, s] = g_u
    strict = torch.ones(c, c, dtype=torch.bool, device=g.device).tril(-1)
    x = x.masked_fill(~strict[:, :, None], 0.0)                      # keep u > s
    e = torch.cumsum(x, dim=-3)                                      # e[t, s] = sum_{s<u<=t}
    lower = torch.ones(c, c, dtype=torch.bool, device=g.device).tril()
    return e.masked_fill(~lower[:, :, None], float("-inf"))


def _suffix(g):
    """g (..., c, d) -> sum_{s<u<c} g_u (exclusive suffix sums along -2)."""
    s = torch.flip(torch.cumsum(torch.flip(g, [-2]), -2), [-2])
    return torch.cat([s[..., 1:, :], torch.zeros_like(s[..., :1, :])], dim=-2)


def gla_chunked(q, k, v, g, S0, chunk=64, sub=16):
    """Chunkwise GLA. q, k, g (b, h, T, dk); v (b, h, T, dv); g = log decay (<= 0);
    S0 (b, h, dk, dv). q is already scaled. Returns o (b, h, T, dv) and the final state.

    Inside a chunk of C tokens, with P_t = g_0 + ... + g_t (cumulative log decay):
      o_t = (q_t * exp(P_t)) S_in + sum_{s <= t in chunk} sum_d q_td k_sd exp(P_td - P_sd) v_s
    The pair sum is split by sub-chunks of c tokens: for key sub-chunk i < query sub-chunk j
    exp(P_t - P_s) = exp(P_t - R_j) * exp(R_j - P_s), R_j = P at the end of sub-chunk j-1,
    both factors <= 1; for i == j it is formed per pair and dimension. Every exponent is a
    sum of log decays over a span (never a difference of cumulative sums), so it is <= 0
    and as precise as its terms.
    """
    b, h, T, dk = q.shape
    dv = v.shape[-1]
    C, c = chunk, sub
    pad = (-T) % C
    if pad:  # zero q/k/v and zero log decay: padded steps leave the state untouched
        q, k, g = (F.pad(t, (0, 0, 0, pad)) for t in (q, k, g))
        v = F.pad(v, (0, 0, 0, pad))
    n, m = (T + pad) // C, C // c
    qf = q.reshape(b, h, n, C, dk)
    kf = k.reshape(b, h, n, C, dk)
    vf = v.reshape(b, h, n, C, dv)
    gs = g.reshape(b, h, n, m, c, dk)
    qs = qf.reshape(b, h, n, m, c, dk)
    ks = kf.reshape(b, h, n, m, c, dk)
    dev = q.device

    # 1. diagonal sub-blocks, exact: A_d[t, s] = sum_d q_t k_s exp(sum_{s<u<=t} g_u)
    A_d = (qs[..., :, None, :] * ks[..., None, :, :] * torch.exp(_segsum(gs))).sum(-1)
    o = torch.matmul(A_d, vf.reshape(b, h, n, m, c, dv))                     # (b,h,n,m,c,dv)

    # 2. earlier sub-blocks of the same chunk through the reference R_j
    if m > 1:
        tot = gs.sum(-2)                                                     # (b,h,n,m,dk)
        # between[j, i] = sum of the totals of sub-chunks i+1 .. j-1 (for i < j)
        between = _segsum(tot)                                               # (b,h,n,m,m,dk)
        between = torch.cat([torch.full_like(between[..., :1, :, :], float("-inf")),
                             between[..., :-1, :, :]], dim=-3)               # row j <- row j-1
        qt = qs * torch.exp(torch.cumsum(gs, -2))                            # P_t - R_j
        e2 = between[..., :, :, None, :] + _suffix(gs)[..., None, :, :, :]   # (b,h,n,m,m,c,dk)
        earlier = torch.ones(m, m, dtype=torch.bool, device=dev).tril(-1)    # i < j
        e2 = e2.masked_fill(~earlier[:, :, None, None], float("-inf"))
        kt = ks[..., None, :, :, :] * torch.exp(e2)                          # R_j - P_s
        A_o = torch.matmul(qt, kt.reshape(b, h, n, m, C, dk).transpose(-1, -2))  # (b,h,n,m,c,C)
        o = o + torch.matmul(A_o, vf[:, :, :, None])
    o = o.reshape(b, h, n, C, dv)

    # 3. across chunks: each chunk's own contribution to its end state, then the carry
    gf = g.reshape(b, h, n, C, dk)
    U = torch.matmul((kf * torch.exp(_suffix(gf))).transpose(-1, -2), vf)  # (b,h,n,dk,dv)
    decay = torch.exp(gf.sum(-2))[..., None]                                 # (b,h,n,dk,1)
    S = S0
    ins = []
    for i in range(n):
        ins.append(S)
        S = decay[:, :, i] * S + U[:, :, i]
    S_in = torch.stack(ins, dim=2)                                           # (b,h,n,dk,dv)
    o = o + torch.matmul(qf * torch.exp(torch.cumsum(gf, -2)), S_in)
    return o.reshape(b, h, n * C, dv)[:, :, :T], S


# -------------------------------------------------------------------- layers
class GatedLinearAttention(nn.Module):
    def __init__(self, cfg: GLAConfig):
        super().__init__()
        self.cfg = cfg
        D, K, V = cfg.hidden_size, cfg.key_dim, cfg.value_dim
        self.q_proj = nn.Linear(D, K, bias=False)
        self.k_proj = nn.Linear(D, K, bias=False)
        self.v_proj = nn.Linear(D, V, bias=False)
        self.g_proj = nn.Linear(D, V, bias=False)
        if cfg.use_short_conv:
            for name, dim in (("q_conv1d", K), ("k_conv1d", K), ("v_conv1d", V)):
                setattr(self, name, nn.Conv1d(dim, dim, cfg.conv_size, groups=dim, bias=False))
        self.gk_proj = nn.Sequential(nn.Linear(D, GATE_LOW_RANK, bias=False),
                                     nn.Linear(GATE_LOW_RANK, K, bias=True))
        self.o_proj = nn.Linear(V, D, bias=False)
        self.g_norm_swish_gate = nn.Module()
        self.g_norm_swish_gate.weight = nn.Parameter(torch.ones(cfg.head_v))

    def _in_proj(self, u):
        """q|k|v|g|gk-low-rank of u in one matmul."""
        w = torch.cat([self.q_proj.weight, self.k_proj.weight, self.v_proj.weight,
                       self.g_proj.weight, self.gk_proj[0].weight], dim=0)
        c = self.cfg
        return torch.split(F.linear(u, w), [c.conv_dim, c.value_dim, GATE_LOW_RANK], dim=-1)

    def _conv_weight(self, f):
        return torch.cat([self.q_conv1d.weight, self.k_conv1d.weight,
                          self.v_conv1d.weight], dim=0)[:, 0, :].to(f)        # (conv_dim, K)

    def _gate(self, lr, f):
        gk = F.logsigmoid(self.gk_proj[1](lr).to(f)) / GATE_LOGIT_NORMALIZER
        if self.cfg.clamp_min is not None:
            gk = torch.clamp_min(gk, self.cfg.clamp_min)
        return gk

    def _out(self, o, gate, f):
        """o (..., H, dv) -> gated per-head RMSNorm -> (..., value_dim), dtype f."""
        c = self.cfg
        o = o * torch.rsqrt(o.pow(2).mean(-1, keepdim=True) + c.norm_eps)
        o = o * self.g_norm_swish_gate.weight.to(f)
        gate = gate.to(f).reshape(o.shape)
        return (o * F.silu(gate)).reshape(*o.shape[:-2], c.value_dim)

    def forward(self, u, conv_state, S0):
        c = self.cfg
        b, T, _ = u.shape
        f = cdtype(self.o_proj.weight)
        qkv, gate, lr = self._in_proj(u)
        H, dk, dv = c.num_heads, c.head_k, c.head_v
        with _autocast_off(u.device.type):
            gk = self._gate(lr.to(f), f)
            qkv = qkv.to(f)
            if c.use_short_conv:
                K = c.conv_size
                xp = torch.cat([conv_state.to(f), qkv], dim=1)                 # (b, K-1+T, conv_dim)
                w = self._conv_weight(f)
                acc = xp[:, 0:T] * w[:, 0]
                for i in range(1, K):
                    acc = acc + xp[:, i:i + T] * w[:, i]
                new_conv = xp[:, xp.shape[1] - (K - 1):]
                qkv = F.silu(acc)
            else:
                new_conv = conv_state
            q, k, v = torch.split(qkv, [c.key_dim, c.key_dim, c.value_dim], dim=-1)
            heads = lambda t, d: t.reshape(b, T, H, d).transpose(1, 2)        # noqa: E731
            o, S = gla_chunked(heads(q, dk) * dk ** -0.5, heads(k, dk), heads(v, dv),
                               heads(gk, dk), S0.to(f), c.chunk_size, c.sub_chunk)
            o = self._out(o.transpose(1, 2), gate, f)                         # (b, T, value_dim)
        return self.o_proj(o), new_conv, S

    def step(self, u, conv_state, S):
        """One token, u (b, D): the plain recurrence in float32/float64."""
        c = self.cfg
        b = u.shape[0]
        f = torch.promote_types(u.dtype, torch.float32)
        qkv, gate, lr = self._in_proj(u)
        gk = self._gate(lr.to(f), f)
        qkv = qkv.to(f)
        if c.use_short_conv:
            win = torch.cat([conv_state.to(f), qkv[:, None]], dim=1)          # (b, K, conv_dim)
            qkv = F.silu((win * self._conv_weight(f).t()[None]).sum(1))
            new_conv = win[:, 1:]
        else:
            new_conv = conv_state
        q, k, v = torch.split(qkv, [c.key_dim, c.key_dim, c.value_dim], dim=-1)
        H, dk, dv = c.num_heads, c.head_k, c.head_v
        q, k, gk = (t.reshape(b, H, dk) for t in (q, k, gk))
        v = v.reshape(b, H, dv)
        S = torch.exp(gk)[..., None] * S.to(f) + k[..., :, None] * v[..., None, :]
        o = ((q * dk ** -0.5)[..., :, None] * S).sum(-2)                      # (b, H, dv)
        o = self._out(o, gate, f)
        return self.o_proj(o.to(self.o_proj.weight.dtype)), new_conv, S


class GatedMLP(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        D, I = cfg.hidden_size, cfg.intermediate_size
        self.gate_proj = nn.Linear(D, I, bias=False)
        self.up_proj = nn.Linear(D, I, bias=False)
        self.down_proj = nn.Linear(I, D, bias=False)

    def forward(self, x):
        w = torch.cat([self.gate_proj.weight, self.up_proj.weight], dim=0)
        gate, up = F.linear(x, w).chunk(2, dim=-1)
        return self.down_proj(F.silu(gate) * up)


class GLABlock(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.attn_norm = RMSNorm(cfg.hidden_size, cfg.norm_eps)
        self.attn = GatedLinearAttention(cfg)
        self.mlp_norm = RMSNorm(cfg.hidden_size, cfg.norm_eps)
        self.mlp = GatedMLP(cfg)


class GLAModel(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.embeddings = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList([GLABlock(cfg) for _ in range(cfg.num_hidden_layers)])
        self.norm = RMSNorm(cfg.hidden_size, cfg.norm_eps)


class GLALM(nn.Module):
    arch = "gla"

    def __init__(self, cfg: GLAConfig):
        super().__init__()
        self.cfg = cfg
        self.model = GLAModel(cfg)
        if not cfg.tie_word_embeddings:
            self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)

    def zero_states(self, batch, device=None):
        c = self.cfg
        device = device or self.model.embeddings.weight.device
        return [(torch.zeros(batch, c.conv_window, c.conv_dim, device=device),
                 torch.zeros(batch, c.num_heads, c.head_k, c.head_v, device=device))
                for _ in range(c.num_hidden_layers)]

    def _head_weight(self):
        return self.model.embeddings.weight if self.cfg.tie_word_embeddings else self.lm_head.weight

    def forward(self, ids, states=None):
        """ids (b, T) -> logits (b, T, vocab), final states (list of (conv, S), float32)."""
        b = ids.shape[0]
        if states is None:
            states = self.zero_states(b, ids.device)
        f = cdtype(self.model.embeddings.weight)
        x = self.model.embeddings(ids).to(f)                    # residual stream in fp32
        out = []
        for layer, (cs, ss) in zip(self.model.layers, states):
            y, cs2, ss2 = layer.attn(layer.attn_norm(x), cs, ss)
            x = x + y.to(f)
            x = x + layer.mlp(layer.mlp_norm(x)).to(f)
            out.append((cs2, ss2))
        return F.linear(self.model.norm(x), self._head_weight()), out

    def step(self, ids, states):
        """ids (b,) -> logits (b, vocab), new states: the token-by-token recurrence."""
        x = self.model.embeddings(ids)
        x = x.to(torch.promote_types(x.dtype, torch.float32))
        new = []
        for layer, (cs, ss) in zip(self.model.layers, states):
            y, cs2, ss2 = layer.attn.step(layer.attn_norm(x).to(x.dtype), cs, ss)
            x = x + y.to(x.dtype)
            x = x + layer.mlp(layer.mlp_norm(x).to(x.dtype)).to(x.dtype)
            new.append((cs2, ss2))
        return F.linear(self.model.norm(x).to(x.dtype), self._head_weight().to(x.dtype)), new

    @torch.no_grad()
    def init_weights(self, seed=0, std=0.02):
        """fla's init (normal(0, 0.02) for linears and the embedding, zero biases, ones for
        norms), the residual outputs (o_proj, down_proj) scaled by 1/sqrt(2 n_layer)
        (fla's prenorm_residual_strategy 'rescale' idea), and the short convs at
        PyTorch's default uniform(+-1/sqrt(conv_size)) so q/k/v start at full scale."""
        g = torch.Generator().manual_seed(seed)
        c = self.cfg
        for name, p in self.named_parameters():
            if name.endswith("conv1d.weight"):
                p.copy_((torch.rand(p.shape, generator=g) * 2 - 1) / math.sqrt(c.conv_size))
            elif "norm" in name:
                p.fill_(1.0)
            elif name.endswith("bias"):
                p.zero_()
            else:
                s = std
                if name.endswith(("o_proj.weight", "down_proj.weight")):
                    s = std / math.sqrt(2 * c.num_hidden_layers)
                p.copy_(torch.randn(p.shape, generator=g) * s)
        return self

    def n_params(self):
        return sum(p.numel() for p in self.parameters())


# ------------------------------------------------------- fla checkpoint dirs
def fla_tensors(model, dtype=torch.bfloat16):
    out = {}
    for k, v in model.state_dict().items():
        if k == "lm_head.weight" and model.cfg.tie_word_embeddings:
            continue
        out[k] = v.detach().to("cpu").to(dtype).contiguous()
    return out


def save_fla(model, d, dtype=torch.bfloat16, metadata=None, training_context=None):
    """config.json (fla GLAConfig) + model.safetensors into d. Returns the weights' sha256."""
    import json
    import os

    import checkpoint
    import stio
    os.makedirs(d, exist_ok=True)
    meta = {"format": "pt"}
    meta.update(metadata or {})
    path = os.path.join(d, "model.safetensors")
    stio.save(fla_tensors(model, dtype), path, metadata=meta)
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(model.cfg.to_fla(training_context), f, indent=2)
        f.write("\n")
    return checkpoint.sha256_file(path)


def load_fla(d, dtype=torch.float32, **over):
    """An fla GLA checkpoint dir (config.json + model.safetensors) -> GLALM (eval)."""
    import json
    import os

    import checkpoint
    with open(os.path.join(d, "config.json")) as f:
        c = json.load(f)
    cfg = GLAConfig.from_fla(c, **over)
    sd = checkpoint._read_tensors(d)
    if cfg.tie_word_embeddings:
        sd.pop("lm_head.weight", None)
    return checkpoint.load_checked(GLALM(cfg), sd, d, dtype)
