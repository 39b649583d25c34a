"""train/longeval.py's failure ratio (issue 17) and the trainer's IID-noise initial states."""
import math

import numpy as np
import torch

import longeval
from model import Mamba2LM, ModelConfig
from trainer import TrainArgs, train


def tiny(seed=0):
    cfg = ModelConfig(d_model=32, n_layer=2, d_state=8, headdim=16, vocab_size=64, chunk_size=8)
    return Mamba2LM(cfg).init_weights(seed, dt_min=1e-3, dt_max=1e-1).float()


def test_targets_start_at_T_and_stay_in_their_buckets():
    tg = longeval.failure_targets(5000, 256, 16, seed=3)
    assert min(lo for lo, _ in tg) == 256
    for (lo, hi), ts in tg.items():
        assert all(lo <= t < min(hi, 5000) for t in ts) and len(ts) == 16
    assert max(hi for _, hi in tg) == 8192
    assert longeval.failure_targets(100, 256, 16) == {}


def test_restart_is_exactly_T_tokens_from_zero_and_stream_is_the_whole_prefix():
    torch.manual_seed(0)
    m = tiny()
    ids = np.random.default_rng(1).integers(0, 64, 700)
    T = 32
    bk = longeval.failure_book(m, ids, T, per_bucket=5, seed=7, seg=100)
    lp_plain = longeval.token_logprobs(m, ids, seg=100)
    tg = longeval.failure_targets(len(ids), T, 5, seed=7)
    with torch.no_grad():
        full, _ = m(torch.as_tensor(ids[None]))
        lp_full = torch.log_softmax(full[0].double(), -1)
        for row in bk["failure"]:
            ts = tg[(row["start"], row["end"])]
            s = -sum(float(lp_full[t - 1, ids[t]]) for t in ts)
            r = 0.0
            for t in ts:
                lg, _ = m(torch.as_tensor(ids[None, t - T:t]))
                r -= float(torch.log_softmax(lg[0, -1].double(), -1)[ids[t]])
            assert math.isclose(row["stream_nll"], s, rel_tol=1e-4), (row, s)
            assert math.isclose(row["restart_nll"], r, rel_tol=1e-4), (row, r)
        # every prediction of the cut stream equals the uncut forward pass's
        want = lp_full[np.arange(len(ids) - 1), ids[1:]].numpy()
        assert np.allclose(lp_plain, want, atol=1e-4)
    pooled = longeval.pool_failure([bk, bk])
    for p, row in zip(pooled, bk["failure"]):
        assert p["n"] == 2 * row["n"]
        assert math.isclose(p["ratio"], math.exp((row["stream_nll"] - row["restart_nll"]) / row["n"]))
    pos = [p for p, _ in bk["state_std"]]
    assert pos[:3] == [1, 2, 4] and pos[-1] == len(ids) - 1
    assert all(len(s) == 2 and all(v > 0 for v in s) for _, s in bk["state_std"])


class Rand:
    batch, ctx = 4, 16

    def __init__(self):
        self.g = torch.Generator().manual_seed(0)

    def next(self):
        w = torch.randint(0, 64, (self.batch, self.ctx + 1), generator=self.g)
        return w[:, :-1], w[:, 1:], None


@torch.enable_grad()
def test_noise_initial_states_have_one_std_and_are_used():
    m = tiny()
    h = train(m, Rand(), None, TrainArgs(max_steps=3, init_state="noise", noise_std=0.5,
                                         log_every=1, eval_every=0, amp="off"),
              torch.device("cpu"), log=lambda *a: None)
    assert h["noise_std"] == 0.5 and h["steps"] == 3
    # the same weights and batches from zero states score the first batch differently
    hz = train(tiny(), Rand(), None, TrainArgs(max_steps=1, log_every=1, eval_every=0,
                                               amp="off"), torch.device("cpu"), log=lambda *a: None)
    assert abs(hz["log"][0]["loss"] - h["log"][0]["loss"]) > 1e-4
    h2 = train(tiny(), Rand(), None, TrainArgs(max_steps=2, init_state="noise", log_every=1,
                                               eval_every=0, amp="off"),
               torch.device("cpu"), log=lambda *a: None)
    assert 0 < h2["noise_std"] < 10
