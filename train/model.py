"""Mamba-2 language model in pure PyTorch, matching mamba_ssm's Mamba2 block and
recurd's C engine.

Per layer l:  h = h + out_proj(mixer(RMSNorm_l(h)));  logits = norm_f(h) @ E^T.
mixer(u):
    z | xBC | dt = in_proj(u)                     sizes d_inner | conv_dim | nheads
    xBC = silu(causal depthwise conv(xBC))        kernel d_conv, with bias
    x | B | C = xBC                               d_inner | G*N | G*N
    dt = softplus(dt + dt_bias) (clamped to dt_limit if one is set); A = -exp(A_log)
    S_t = exp(dt*A) S_{t-1} + dt x_t (x) B_t      per head: headdim x d_state
    y_t = S_t C_t + D x_t
    out = out_proj(RMSNorm_grouped(y * silu(z)))  groups of d_inner/G, mamba_ssm order

The recurrent state of a layer is (conv, ssm):
    conv (B, d_conv-1, conv_dim)  the last d_conv-1 conv inputs (pre-activation xBC), oldest first
    ssm  (B, nheads, headdim, d_state)
Both are float32 always. The forward takes per-layer initial states and returns the
final ones, so a stream can be cut anywhere and carried on (State Passing, TBTT,
long-context evaluation).

Two implementations of the same function:
    Mamba2LM.forward   chunked SSD scan ("minimal SSD": quadratic inside a chunk,
                       recurrent across chunks), for training and long evaluation;
    Mamba2LM.step      one token at a time, the plain recurrence (reference, sampling).
Parameter names are the state-spaces (mamba_ssm MambaLMHeadModel) names, so a
state_dict exports as is.
"""
import math
from dataclasses import asdict, dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class ModelConfig:
    d_model: int = 384
    n_layer: int = 8
    vocab_size: int = 8192          # ids a tokenizer may produce
    d_state: int = 128
    d_conv: int = 4
    expand: int = 2
    headdim: int = 64
    ngroups: int = 1
    pad_vocab_size_multiple: int = 16
    norm_eps: float = 1e-5
    tie_embeddings: bool = True
    proj_bias: bool = False         # in_proj/out_proj bias (mamba_ssm "bias")
    conv_bias: bool = True
    dt_limit: tuple = (0.0, float("inf"))
    chunk_size: int = 64            # SSD chunk; a speed knob, not part of the function

    def __post_init__(self):
        self.dt_limit = tuple(float(v) for v in self.dt_limit)
        if self.d_inner % self.headdim:
            raise ValueError(f"d_inner {self.d_inner} not a multiple of headdim {self.headdim}")
        if self.nheads % self.ngroups:
            raise ValueError(f"nheads {self.nheads} not a multiple of ngroups {self.ngroups}")

    @property
    def d_inner(self):
        return self.expand * self.d_model

    @property
    def nheads(self):
        return self.d_inner // self.headdim

    @property
    def conv_dim(self):
        return self.d_inner + 2 * self.ngroups * self.d_state

    @property
    def d_in_proj(self):
        return 2 * self.d_inner + 2 * self.ngroups * self.d_state + self.nheads

    @property
    def n_vocab(self):
        m = self.pad_vocab_size_multiple
        return (self.vocab_size + m - 1) // m * m

    def has_dt_limit(self):
        return self.dt_limit != (0.0, float("inf"))

    def to_state_spaces(self):
        """config.json in the MambaLMHeadModel layout."""
        ssm = {"layer": "Mamba2", "d_state": self.d_state, "d_conv": self.d_conv,
               "expand": self.expand, "headdim": self.headdim, "ngroups": self.ngroups}
        if self.proj_bias:
            ssm["bias"] = True
        if not self.conv_bias:
            ssm["conv_bias"] = False
        if self.has_dt_limit():
            ssm["dt_limit"] = list(self.dt_limit)
        return {"d_model": self.d_model, "d_intermediate": 0, "n_layer": self.n_layer,
                "vocab_size": self.vocab_size, "ssm_cfg": ssm, "attn_layer_idx": [],
                "attn_cfg": {}, "rms_norm": True, "residual_in_fp32": True,
                "fused_add_norm": True, "pad_vocab_size_multiple": self.pad_vocab_size_multiple,
                "tie_embeddings": self.tie_embeddings}

    @classmethod
    def from_state_spaces(cls, c, **over):
        ssm = c.get("ssm_cfg", {})
        if ssm.get("layer", "Mamba2") != "Mamba2":
            raise ValueError(f"not a Mamba-2 config: ssm_cfg.layer = {ssm.get('layer')}")
        if c.get("d_intermediate", 0) or c.get("attn_layer_idx"):
            raise ValueError("MLP or attention layers are not supported")
        kw = dict(d_model=c["d_model"], n_layer=c["n_layer"], vocab_size=c["vocab_size"],
                  d_state=ssm.get("d_state", 128), d_conv=ssm.get("d_conv", 4),
                  expand=ssm.get("expand", 2), headdim=ssm.get("headdim", 64),
                  ngroups=ssm.get("ngroups", 1),
                  pad_vocab_size_multiple=c.get("pad_vocab_size_multiple", 8),
                  tie_embeddings=c.get("tie_embeddings", True),
                  proj_bias=ssm.get("bias", False), conv_bias=ssm.get("conv_bias", True),
                  dt_limit=tuple(ssm.get("dt_limit", (0.0, float("inf")))))
        kw.update(over)
        return cls(**kw)

    @classmethod
    def from_hf(cls, c, **over):
        """From a transformers Mamba2Config dict (vocab_size there = embedding rows)."""
        lim = c.get("time_step_limit", (0.0, float("inf")))
        lim = tuple(float("inf") if isinstance(v, dict) else float(v) for v in lim)
        kw = dict(d_model=c["hidden_size"], n_layer=c["num_hidden_layers"],
                  vocab_size=c["vocab_size"], d_state=c["state_size"], d_conv=c["conv_kernel"],
                  expand=c["expand"], headdim=c["head_dim"], ngroups=c["n_groups"],
                  pad_vocab_size_multiple=1, tie_embeddings=c.get("tie_word_embeddings", False),
                  proj_bias=c.get("use_bias", False), conv_bias=c.get("use_conv_bias", True),
                  norm_eps=c.get("layer_norm_epsilon", 1e-5), dt_limit=lim)
        kw.update(over)
        return cls(**kw)

    def to_dict(self):
        d = asdict(self)
        d["dt_limit"] = list(self.dt_limit)
        return d


# --------------------------------------------------------------------- pieces
def cdtype(p):
    """Compute dtype for state/scan/norm math: float64 when the weights are (tests), else float32."""
    return torch.float64 if p.dtype == torch.float64 else torch.float32


class RMSNorm(nn.Module):
    def __init__(self, d, eps):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))
        self.eps = eps

    def forward(self, x):
        dt = cdtype(self.weight)
        xf = x.to(dt)
        return xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight.to(dt)


def gated_rmsnorm(y, z, weight, ngroups, eps):
    """mamba_ssm RMSNormGated(norm_before_gate=False): normalise y*silu(z) per group."""
    dt = cdtype(weight)
    y = y.to(dt) * F.silu(z.to(dt))
    shp = y.shape
    y = y.reshape(*shp[:-1], ngroups, shp[-1] // ngroups)
    y = y * torch.rsqrt(y.pow(2).mean(-1, keepdim=True) + eps)
    return y.reshape(shp) * weight.to(dt)


def segsum(a):
    """a (..., Q) -> (..., Q, Q) with out[i, j] = a[j+1] + ... + a[i] for i >= j, -inf above.
    Built from a masked cumsum rather than differences of a cumsum, so no cancellation."""
    Q = a.shape[-1]
    x = a[..., None].expand(*a.shape, Q)                       # x[..., k, j] = a[k]
    strict = torch.ones(Q, Q, dtype=torch.bool, device=a.device).tril(-1)
    x = x.masked_fill(~strict, 0.0)                            # keep k > j
    s = torch.cumsum(x, dim=-2)                                # s[i, j] = sum_{j<k<=i} a[k]
    lower = torch.ones(Q, Q, dtype=torch.bool, device=a.device).tril(0)
    return s.masked_fill(~lower, float("-inf"))


def ssd_chunked(x, a, B, C, chunk, init=None):
    """Chunked SSD scan for heads sharing one B/C (one group).

    x (b, T, h, p) = dt * x;  a (b, T, h) = dt * A (log decay, <= 0);  B, C (b, T, n);
    init (b, h, p, n) or None (zero). Returns y (b, T, h, p) without the D term, and the
    final state (b, h, p, n). All float32 (callers cast).
    """
    b, T, h, p = x.shape
    n = B.shape[-1]
    pad = (-T) % chunk
    if pad:  # zero x/B/C and zero log-decay: padded steps leave the state untouched
        x = F.pad(x, (0, 0, 0, 0, 0, pad))
        a = F.pad(a, (0, 0, 0, pad))
        B = F.pad(B, (0, 0, 0, pad))
        C = F.pad(C, (0, 0, 0, pad))
    Q = chunk
    c = (T + pad) // Q
    x = x.reshape(b, c, Q, h, p)
    a = a.reshape(b, c, Q, h).permute(0, 3, 1, 2)             # (b, h, c, Q)
    B = B.reshape(b, c, Q, n)
    C = C.reshape(b, c, Q, n)
    acs = torch.cumsum(a, dim=-1)                              # (b, h, c, Q)

    # 1. inside each chunk: y[l] = sum_{s<=l} C_l.B_s exp(acs_l - acs_s) x_s
    L = torch.exp(segsum(a)).permute(0, 2, 1, 3, 4)            # (b, c, h, Q(l), Q(s))
    CB = torch.matmul(C, B.transpose(-1, -2))                  # (b, c, Q(l), Q(s))
    xh = x.permute(0, 1, 3, 2, 4)                              # (b, c, h, Q, p)
    y_diag = torch.matmul(L * CB[:, :, None], xh)              # (b, c, h, Q, p)

    # 2. each chunk's own contribution to the state at its end (from zero)
    decay_to_end = torch.exp(acs[..., -1:] - acs).permute(0, 2, 1, 3)   # (b, c, h, Q)
    xd = (xh * decay_to_end[..., None]).permute(0, 1, 2, 4, 3)          # (b, c, h, p, Q)
    st = torch.matmul(xd.reshape(b, c, h * p, Q), B).reshape(b, c, h, p, n)

    # 3. across chunks: state entering chunk k, and the final state
    if init is None:
        init = torch.zeros(b, h, p, n, dtype=x.dtype, device=x.device)
    st = torch.cat([init[:, None], st], dim=1)                 # (b, c+1, h, p, n)
    chunk_decay = torch.exp(segsum(F.pad(acs[..., -1], (1, 0))))        # (b, h, c+1, c+1)
    st = torch.einsum("bhzc,bchpn->bzhpn", chunk_decay, st)
    st_in, final = st[:, :-1], st[:, -1]

    # 4. the entering state's contribution: y[l] += exp(acs_l) C_l . S_in
    y_off = torch.matmul(C, st_in.reshape(b, c, h * p, n).transpose(-1, -2))  # (b, c, Q, h*p)
    y_off = y_off.reshape(b, c, Q, h, p) * torch.exp(acs).permute(0, 2, 3, 1)[..., None]
    y = y_diag.permute(0, 1, 3, 2, 4) + y_off                  # (b, c, Q, h, p)
    return y.reshape(b, c * Q, h, p)[:, :T], final


def _autocast_off(device_type):
    try:
        return torch.autocast(device_type=device_type, enabled=False)
    except (RuntimeError, ValueError):  # device type autocast does not know
        import contextlib
        return contextlib.nullcontext()


# ---------------------------------------------------------------------- mixer
class Mamba2Mixer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.in_proj = nn.Linear(cfg.d_model, cfg.d_in_proj, bias=cfg.proj_bias)
        self.conv1d = nn.Conv1d(cfg.conv_dim, cfg.conv_dim, cfg.d_conv, groups=cfg.conv_dim,
                                bias=cfg.conv_bias)
        self.dt_bias = nn.Parameter(torch.zeros(cfg.nheads))
        self.A_log = nn.Parameter(torch.zeros(cfg.nheads))
        self.D = nn.Parameter(torch.ones(cfg.nheads))
        self.norm = nn.Module()
        self.norm.weight = nn.Parameter(torch.ones(cfg.d_inner))
        self.out_proj = nn.Linear(cfg.d_inner, cfg.d_model, bias=cfg.proj_bias)

    def _split(self, zxbcdt):
        c = self.cfg
        return torch.split(zxbcdt, [c.d_inner, c.conv_dim, c.nheads], dim=-1)

    def _dt(self, dt, f):
        dt = F.softplus(dt.to(f) + self.dt_bias.to(f))
        if self.cfg.has_dt_limit():
            dt = dt.clamp(self.cfg.dt_limit[0], self.cfg.dt_limit[1])
        return dt

    def forward(self, u, conv_state, ssm_state):
        """u (b, T, d_model); states as in the module doc. Returns out, conv', ssm'."""
        c = self.cfg
        b, T, _ = u.shape
        f = cdtype(self.A_log)
        z, xBC, dt = self._split(self.in_proj(u))
        with _autocast_off(u.device.type):
            # causal depthwise conv over [carried window, new inputs], in float32
            xp = torch.cat([conv_state.to(f), xBC.to(f)], dim=1)       # (b, K-1+T, conv_dim)
            w = self.conv1d.weight.to(f)[:, 0, :]                       # (conv_dim, K)
            K = c.d_conv
            acc = xp[:, 0:T] * w[:, 0]
            for k in range(1, K):
                acc = acc + xp[:, k:k + T] * w[:, k]
            if self.conv1d.bias is not None:
                acc = acc + self.conv1d.bias.to(f)
            new_conv = xp[:, xp.shape[1] - (K - 1):]
            xBC = F.silu(acc)
            G, N, P, H = c.ngroups, c.d_state, c.headdim, c.nheads
            x, Bm, Cm = torch.split(xBC, [c.d_inner, G * N, G * N], dim=-1)
            dt = self._dt(dt, f)                                        # (b, T, H)
            A = -torch.exp(self.A_log.to(f))
            x = x.reshape(b, T, H, P)
            hg = H // G
            # fold groups into the batch: each group's heads share its B and C
            xg = (x * dt[..., None]).reshape(b, T, G, hg, P).permute(0, 2, 1, 3, 4)
            ag = (dt * A).reshape(b, T, G, hg).permute(0, 2, 1, 3)
            Bg = Bm.reshape(b, T, G, N).permute(0, 2, 1, 3)
            Cg = Cm.reshape(b, T, G, N).permute(0, 2, 1, 3)
            s0 = ssm_state.to(f).reshape(b, G, hg, P, N)
            y, s1 = ssd_chunked(xg.reshape(b * G, T, hg, P), ag.reshape(b * G, T, hg),
                                Bg.reshape(b * G, T, N), Cg.reshape(b * G, T, N),
                                c.chunk_size, s0.reshape(b * G, hg, P, N))
            y = y.reshape(b, G, T, hg, P).permute(0, 2, 1, 3, 4).reshape(b, T, H, P)
            new_ssm = s1.reshape(b, H, P, N)
            y = y + x * self.D.to(f)[:, None]
            y = gated_rmsnorm(y.reshape(b, T, c.d_inner), z, self.norm.weight, c.ngroups, c.norm_eps)
        # out_proj outside the fp32 region: under autocast it runs in bf16 like in_proj
        return self.out_proj(y), new_conv, new_ssm

    def step(self, u, conv_state, ssm_state):
        """One token. u (b, d_model). The plain recurrence, in the dtype of the weights
        (float32 or float64): the reference the chunked scan is checked against."""
        c = self.cfg
        b = u.shape[0]
        dtype = torch.promote_types(u.dtype, torch.float32)
        z, xBC, dt = self._split(self.in_proj(u))
        win = torch.cat([conv_state.to(dtype), xBC.to(dtype)[:, None]], dim=1)  # (b, K, conv_dim)
        w = self.conv1d.weight.to(dtype)[:, 0, :]                              # (conv_dim, K)
        xc = (win * w.t()[None]).sum(1)
        if self.conv1d.bias is not None:
            xc = xc + self.conv1d.bias.to(dtype)
        xc = F.silu(xc)
        G, N, P, H = c.ngroups, c.d_state, c.headdim, c.nheads
        x, Bm, Cm = torch.split(xc, [c.d_inner, G * N, G * N], dim=-1)
        dt = F.softplus(dt.to(dtype) + self.dt_bias.to(dtype))
        if c.has_dt_limit():
            dt = dt.clamp(c.dt_limit[0], c.dt_limit[1])
        A = -torch.exp(self.A_log.to(dtype))
        x = x.reshape(b, H, P)
        head_group = torch.arange(H, device=u.device) // (H // G)
        Bh = Bm.reshape(b, G, N)[:, head_group]                                # (b, H, N)
        Ch = Cm.reshape(b, G, N)[:, head_group]
        dA = torch.exp(dt * A)                                                 # (b, H)
        S = ssm_state.to(dtype) * dA[..., None, None] + (dt[..., None] * x)[..., None] * Bh[:, :, None, :]
        y = (S * Ch[:, :, None, :]).sum(-1) + self.D.to(dtype)[:, None] * x
        y = y.reshape(b, c.d_inner) * F.silu(z.to(dtype))
        y = y.reshape(b, G, c.d_inner // G)
        y = y * torch.rsqrt(y.pow(2).mean(-1, keepdim=True) + c.norm_eps)
        y = y.reshape(b, c.d_inner) * self.norm.weight.to(dtype)
        return self.out_proj(y.to(self.out_proj.weight.dtype)), win[:, 1:], S


class Block(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.mixer = Mamba2Mixer(cfg)


class Backbone(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.embedding = nn.Embedding(cfg.n_vocab, cfg.d_model)
        self.layers = nn.ModuleList([Block(cfg) for _ in range(cfg.n_layer)])
        self.norm_f = RMSNorm(cfg.d_model, cfg.norm_eps)


class Mamba2LM(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.backbone = Backbone(cfg)
        if not cfg.tie_embeddings:
            self.lm_head = nn.Linear(cfg.d_model, cfg.n_vocab, bias=False)

    # ---- states
    def zero_states(self, batch, device=None):
        c = self.cfg
        device = device or self.backbone.embedding.weight.device
        return [(torch.zeros(batch, c.d_conv - 1, c.conv_dim, device=device),
                 torch.zeros(batch, c.nheads, c.headdim, c.d_state, device=device))
                for _ in range(c.n_layer)]

    def _head(self, h):
        w = self.backbone.embedding.weight if self.cfg.tie_embeddings else self.lm_head.weight
        return F.linear(h, w)

    def forward(self, ids, states=None, last_only=False):
        """ids (b, T) int64. states: list of (conv, ssm) per layer, or None for zeros.
        Returns logits (b, T, n_vocab) and the final states (same layout, float32);
        last_only: logits of the last position only, (b, 1, n_vocab)."""
        b = ids.shape[0]
        if states is None:
            states = self.zero_states(b, ids.device)
        f = cdtype(self.backbone.embedding.weight)
        h = self.backbone.embedding(ids).to(f)                  # residual stream in fp32
        out_states = []
        for layer, (cs, ss) in zip(self.backbone.layers, states):
            y, cs2, ss2 = layer.mixer(layer.norm(h), cs, ss)
            h = h + y.to(f)
            out_states.append((cs2, ss2))
        if last_only:
            h = h[:, -1:]
        return self._head(self.backbone.norm_f(h)), out_states

    def step(self, ids, states):
        """ids (b,) -> logits (b, n_vocab), new states. Token-by-token recurrence."""
        h = self.backbone.embedding(ids)
        h = h.to(torch.promote_types(h.dtype, torch.float32))
        new = []
        for layer, (cs, ss) in zip(self.backbone.layers, states):
            y, cs2, ss2 = layer.mixer.step(layer.norm(h).to(h.dtype), cs, ss)
            h = h + y.to(h.dtype)
            new.append((cs2, ss2))
        hn = self.backbone.norm_f(h).to(h.dtype)
        w = self.backbone.embedding.weight if self.cfg.tie_embeddings else self.lm_head.weight
        return F.linear(hn, w.to(h.dtype)), new

    # ---- init (mamba_ssm defaults)
    @torch.no_grad()
    def init_weights(self, seed=0, dt_min=1e-3, dt_max=0.1, dt_floor=1e-4, A_range=(1, 16)):
        g = torch.Generator().manual_seed(seed)
        c = self.cfg

        def uniform_(t, bound):
            t.copy_((torch.rand(t.shape, generator=g) * 2 - 1) * bound)

        nn_emb = self.backbone.embedding.weight
        nn_emb.copy_(torch.randn(nn_emb.shape, generator=g) * 0.02)
        if not c.tie_embeddings:
            uniform_(self.lm_head.weight, 1 / math.sqrt(c.d_model))
        for layer in self.backbone.layers:
            m = layer.mixer
            layer.norm.weight.fill_(1.0)
            m.norm.weight.fill_(1.0)
            uniform_(m.in_proj.weight, 1 / math.sqrt(c.d_model))         # nn.Linear default
            # out_proj: default init scaled by 1/sqrt(n_layer) (mamba_ssm rescale_prenorm_residual)
            uniform_(m.out_proj.weight, 1 / math.sqrt(c.d_inner) / math.sqrt(c.n_layer))
            for lin in (m.in_proj, m.out_proj):
                if lin.bias is not None:
                    lin.bias.zero_()
            uniform_(m.conv1d.weight, 1 / math.sqrt(c.d_conv))            # fan_in = d_conv
            if m.conv1d.bias is not None:
                uniform_(m.conv1d.bias, 1 / math.sqrt(c.d_conv))
            dt = torch.exp(torch.rand(c.nheads, generator=g) * (math.log(dt_max) - math.log(dt_min))
                           + math.log(dt_min)).clamp(min=dt_floor)
            m.dt_bias.copy_(dt + torch.log(-torch.expm1(-dt)))           # softplus^-1
            A = torch.empty(c.nheads).uniform_(*A_range, generator=g)
            m.A_log.copy_(torch.log(A))
            m.D.fill_(1.0)
        self.backbone.norm_f.weight.fill_(1.0)
        return self

    def n_params(self):
        return sum(p.numel() for p in self.parameters())


def detach_states(states):
    return [(c.detach(), s.detach()) for c, s in states]


def ssm_stds(states):
    """Per layer: the standard deviation over all elements of the SSM state."""
    return [float(s.float().std()) for _, s in states]
