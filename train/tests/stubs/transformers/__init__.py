"""Stub of transformers' Mamba2 classes (see ../README.md): our model under HF names."""
import sys
import types

import torch
import torch.nn as nn

__version__ = "0.0-stub"


class Mamba2Config:
    def __init__(self, **kw):
        need = {"vocab_size", "hidden_size", "state_size", "num_hidden_layers", "expand",
                "head_dim", "num_heads", "n_groups", "conv_kernel", "use_bias", "use_conv_bias",
                "tie_word_embeddings", "layer_norm_epsilon", "time_step_limit"}
        missing = need - set(kw)
        assert not missing, missing
        assert kw["num_heads"] * kw["head_dim"] == kw["expand"] * kw["hidden_size"]
        self.__dict__.update(kw)


class _Out:
    def __init__(self, logits):
        self.logits = logits


class Mamba2ForCausalLM(nn.Module):
    def __init__(self, config):
        super().__init__()
        sys.path.insert(0, __file__.rsplit("/tests/", 1)[0])
        from model import Mamba2LM, ModelConfig
        c = config
        self.cfg = ModelConfig(d_model=c.hidden_size, n_layer=c.num_hidden_layers,
                               vocab_size=c.vocab_size, d_state=c.state_size, d_conv=c.conv_kernel,
                               expand=c.expand, headdim=c.head_dim, ngroups=c.n_groups,
                               pad_vocab_size_multiple=1, tie_embeddings=False,
                               proj_bias=c.use_bias, conv_bias=c.use_conv_bias,
                               norm_eps=c.layer_norm_epsilon, dt_limit=c.time_step_limit)
        inner = Mamba2LM(self.cfg)
        self.backbone = nn.Module()
        self.backbone.embeddings = inner.backbone.embedding
        self.backbone.layers = inner.backbone.layers
        self.backbone.norm_f = inner.backbone.norm_f
        self.lm_head = inner.lm_head
        self._inner = [inner]

    def tie_weights(self):
        self.lm_head.weight = self.backbone.embeddings.weight

    def forward(self, input_ids=None, use_cache=None, **kw):
        logits, _ = self._inner[0](input_ids)
        return _Out(logits.float())
