"""Training loop for pre-training and post-training (State Passing and friends).

AdamW (no decay on vectors), linear warmup then cosine to min_lr_ratio * lr, bf16
autocast on CUDA (state/scan math stays fp32 inside the model), gradient clipping,
a wall-clock budget, periodic checkpoints through a callback, a JSONL log.

Initial states of each batch (--init-state):
  zero    every sequence starts from the zero state (pre-training)
  sp      State Passing: the detached final states of the previous batch (first batch: zero)
  fitted  IID Gaussian per (layer, head) for the SSM state and per (layer, channel) for the
          conv window, mean/std fitted on final states (a few zero-start batches first,
          then a running average over training batches)
  tbtt    row i continues its own stream; its state carries over (zero after a restart)
  noise   IID Gaussian SSM states, mean 0 and ONE std for every layer and head (the paper's
          "random noise"); noise_std 0 takes the std of the final SSM states of a few
          zero-start batches; the conv window starts at zero
pass_conv=False passes/samples only the SSM state and starts the conv window at zero.

`python3 train/trainer.py --bench ...` times a few steps on random tokens.
"""
import argparse
import json
import math
import time
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from model import Mamba2LM, ModelConfig, detach_states, ssm_stds


@dataclass
class TrainArgs:
    lr: float = 3e-3
    warmup: int = 200
    min_lr_ratio: float = 0.1
    wd: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    clip: float = 1.0
    budget_s: float = 390.0       # wall clock for the loop (incl. periodic evals/ckpts)
    max_steps: int = 0            # 0: as many as the budget allows
    log_every: int = 50
    eval_every: int = 500
    ckpt_every_s: float = 120.0
    init_state: str = "zero"      # zero | sp | fitted | tbtt | noise
    noise_std: float = 0.0        # noise: 0 = measured from zero-start final states
    pass_conv: bool = True
    fit_batches: int = 8
    fit_momentum: float = 0.9
    amp: str = "auto"             # auto (bf16 on cuda) | bf16 | off
    compile: bool = False
    seed: int = 1234
    calib_from: int = 20          # steps [calib_from, calib_steps) are timed to fix the step
    calib_steps: int = 100        # count under a budget (after CUDA warm-up, before warmup ends)


def make_optimizer(model, a, device):
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": a.wd}, {"params": no_decay, "weight_decay": 0.0}]
    kw = dict(lr=a.lr, betas=(a.beta1, a.beta2), eps=1e-8)
    if device.type == "cuda":
        try:
            return torch.optim.AdamW(groups, fused=True, **kw)
        except (TypeError, RuntimeError):
            pass
    return torch.optim.AdamW(groups, **kw)


def lr_at(a, step, progress):
    if step < a.warmup:
        return a.lr * (step + 1) / a.warmup
    p = min(1.0, max(0.0, progress))
    return a.lr * (a.min_lr_ratio + (1 - a.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * p)))


def autocast_ctx(a, device):
    use = (a.amp == "bf16") or (a.amp == "auto" and device.type == "cuda")
    if not use:
        import contextlib
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def lm_loss(logits, targets):
    return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1))


@torch.no_grad()
def evaluate(model, windows, batch, a, device):
    """Mean next-token loss over fixed windows, zero initial state."""
    model.eval()
    tot, n = 0.0, 0
    for i in range(0, windows.shape[0], batch):
        w = windows[i:i + batch].to(device)
        with autocast_ctx(a, device):
            logits, _ = model(w[:, :-1])
        tot += lm_loss(logits, w[:, 1:]).item() * w.shape[0]
        n += w.shape[0]
    model.train()
    return tot / max(1, n)


class FittedNoise:
    """Per-(layer, head) Gaussian for SSM states, per-(layer, channel) for conv windows."""

    def __init__(self, momentum, seed, device):
        self.m = momentum
        self.stats = None
        self.g = torch.Generator(device=device).manual_seed(seed)

    @staticmethod
    def _measure(states):
        out = []
        for c, s in states:
            s = s.float()
            c = c.float()
            out.append((s.mean(dim=(0, 2, 3)), s.std(dim=(0, 2, 3)),
                        c.mean(dim=(0, 1)), c.std(dim=(0, 1))))
        return out

    def update(self, states):
        new = self._measure(detach_states(states))
        if self.stats is None:
            self.stats = new
        else:
            self.stats = [tuple(self.m * o + (1 - self.m) * n for o, n in zip(old, nw))
                          for old, nw in zip(self.stats, new)]

    def sample(self, shapes, device):
        """shapes: a model's zero_states(batch) (any architecture with (conv, state) per
        layer, the state's dim 1 = heads)."""
        out = []
        for (sm, ss, cm, cs), (c0, s0) in zip(self.stats, shapes):
            s = torch.randn(s0.shape, device=device, generator=self.g)
            s = sm[None, :, None, None] + ss[None, :, None, None] * s
            c = torch.randn(c0.shape, device=device, generator=self.g)
            c = cm[None, None, :] + cs[None, None, :] * c
            out.append((c, s))
        return out

    def summary(self):
        return [{"ssm_mean": float(sm.mean()), "ssm_std": float(ss.mean()),
                 "conv_std": float(cs.mean())} for sm, ss, cm, cs in self.stats]


def state_std(states):
    """Mean over layers of the SSM state's std."""
    v = ssm_stds(states)
    return sum(v) / len(v)


def train(model, sampler, val_windows, a: TrainArgs, device, log=print, ckpt_fn=None,
          jsonl=None, tag="train"):
    """Run the loop. Returns a history dict (steps, tokens, losses, timings)."""
    cfg = model.cfg
    model.train()
    opt = make_optimizer(model, a, device)
    fwd = torch.compile(model) if a.compile else model
    B, T = sampler.batch, sampler.ctx
    fitted = None
    prev = None
    if a.init_state == "fitted":
        fitted = FittedNoise(a.fit_momentum, a.seed + 17, device)
        with torch.no_grad(), autocast_ctx(a, device):
            for _ in range(a.fit_batches):
                x, _, _ = sampler.next()
                _, st = model(x)
                fitted.update(st)
        log(f"[{tag}] fitted noise from {a.fit_batches} zero-start batches: "
            + ", ".join(f"L{i} ssm std {d['ssm_std']:.3g}" for i, d in enumerate(fitted.summary())))

    noise_std, noise_g = None, None
    if a.init_state == "noise":
        noise_std = a.noise_std
        if noise_std <= 0:
            with torch.no_grad(), autocast_ctx(a, device):
                stds = []
                for _ in range(a.fit_batches):
                    x, _, _ = sampler.next()
                    _, st = model(x)
                    stds.append(state_std(st))
            noise_std = sum(stds) / len(stds)
        noise_g = torch.Generator(device=device).manual_seed(a.seed + 29)
        log(f"[{tag}] noise initial states: IID N(0, {noise_std:.4g}) for every SSM state")

    hist = {"tag": tag, "args": asdict(a), "log": [], "evals": [], "batch": B, "ctx": T}
    if noise_std is not None:
        hist["noise_std"] = noise_std
    t0 = time.time()
    last_ckpt = t0
    total = a.max_steps if a.max_steps else 10 ** 9
    step, tokens = 0, 0
    t_cal = t0
    loss_acc = torch.zeros((), device=device)
    n_acc, t_int, tok_int = 0, time.time(), 0
    good_state = None
    stop_reason = "max_steps"
    while step < total:
        elapsed = time.time() - t0
        if elapsed > a.budget_s:
            stop_reason = "budget"
            break
        if a.max_steps == 0 and step == a.calib_from:
            t_cal = time.time()
        if a.max_steps == 0 and step == a.calib_steps:
            rate = (a.calib_steps - a.calib_from) / max(1e-6, time.time() - t_cal)
            total = step + int((a.budget_s - elapsed) * rate * 0.98)
            log(f"[{tag}] {rate:.2f} steps/s after {step} steps: planning {total} steps "
                f"({total * B * T / 1e6:.0f}M tokens) in {a.budget_s:.0f}s")
        progress = max(step / max(1, total), elapsed / a.budget_s)
        lr = lr_at(a, step, progress)
        for gp in opt.param_groups:
            gp["lr"] = lr

        x, y, reset = sampler.next()
        if a.init_state == "zero":
            init = None
        elif a.init_state in ("sp", "tbtt"):
            init = prev
            if init is not None and reset is not None and bool(reset.any()):
                keep = (~reset).to(init[0][1].dtype)
                init = [(c * keep[:, None, None], s * keep[:, None, None, None]) for c, s in init]
        elif a.init_state == "fitted":
            init = fitted.sample(model.zero_states(B, device), device)
        elif a.init_state == "noise":
            init = [(c, torch.randn(s.shape, device=device, generator=noise_g) * noise_std)
                    for c, s in model.zero_states(B, device)]
        else:
            raise ValueError(f"unknown init_state {a.init_state}")
        if init is not None and not a.pass_conv:
            init = [(torch.zeros_like(c), s) for c, s in init]
        with autocast_ctx(a, device):
            logits, st = fwd(x, init)
            loss = lm_loss(logits, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gn = torch.nn.utils.clip_grad_norm_(model.parameters(), a.clip)
        opt.step()
        st = detach_states(st)
        if a.init_state in ("sp", "tbtt"):
            prev = st
        elif fitted is not None:
            fitted.update(st)
        step += 1
        tokens += B * T
        loss_acc += loss.detach()
        n_acc += 1
        tok_int += B * T
        early = step in (1, 2, 5, 10, 20)
        if step % a.log_every == 0 or early or step == total:
            lv = (loss_acc / n_acc).item()
            dt = time.time() - t_int
            rec = {"tag": tag, "step": step, "tokens": tokens, "loss": lv, "lr": lr,
                   "grad_norm": float(gn), "tok_per_s": tok_int / max(dt, 1e-9),
                   "elapsed": time.time() - t0, "state_std": state_std(st)}
            hist["log"].append(rec)
            if jsonl:
                jsonl.write(json.dumps(rec) + "\n")
                jsonl.flush()
            log(f"[{tag}] step {step:6d}  loss {lv:.4f}  lr {lr:.2e}  gnorm {float(gn):.2f}  "
                f"{rec['tok_per_s'] / 1e3:8.1f}k tok/s  state std {rec['state_std']:.3f}  "
                f"{rec['elapsed']:.0f}s")
            if not math.isfinite(lv):
                stop_reason = "non-finite loss"
                log(f"[{tag}] non-finite loss at step {step}: stopping")
                if good_state is not None:
                    model.load_state_dict(good_state)
                    log(f"[{tag}] restored weights of step {hist.get('good_step')}")
                break
            loss_acc.zero_()
            n_acc, t_int, tok_int = 0, time.time(), 0
        if val_windows is not None and a.eval_every and step % a.eval_every == 0:
            vl = evaluate(model, val_windows, B, a, device)
            hist["evals"].append({"step": step, "tokens": tokens, "val_loss": vl})
            if jsonl:
                jsonl.write(json.dumps({"tag": tag, "step": step, "val_loss": vl}) + "\n")
            log(f"[{tag}] step {step:6d}  val loss {vl:.4f}  (ppl {math.exp(vl):.2f})")
        if ckpt_fn is not None and time.time() - last_ckpt > a.ckpt_every_s:
            good_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            hist["good_step"] = step
            hist.update(steps=step, tokens=tokens, seconds=time.time() - t0, stop_reason="running")
            ckpt_fn(model, hist)
            last_ckpt = time.time()
    hist.update(steps=step, tokens=tokens, seconds=time.time() - t0, stop_reason=stop_reason,
                planned_steps=total if total < 10 ** 9 else step)
    if hist["log"]:
        hist["final_train_loss"] = hist["log"][-1]["loss"]
        hist["mean_tok_per_s"] = tokens / max(1e-9, hist["seconds"])
    if val_windows is not None:
        vl = evaluate(model, val_windows, B, a, device)
        hist["final_val_loss"] = vl
        hist["evals"].append({"step": step, "tokens": tokens, "val_loss": vl})
        log(f"[{tag}] done: {step} steps, {tokens / 1e6:.1f}M tokens, {hist['seconds']:.0f}s "
            f"({stop_reason}); val loss {vl:.4f} (ppl {math.exp(vl):.2f})")
    if fitted is not None:
        hist["fitted_noise"] = fitted.summary()
    return hist


def pick_device(name="auto"):
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(name)
    if dev.type == "cuda":
        # TF32 for the fp32 parts of training; evaluation turns it off where it matters
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return dev


def bench(argv=None):
    ap = argparse.ArgumentParser(description="time training steps on random tokens")
    ap.add_argument("--bench", action="store_true")
    ap.add_argument("--d-model", type=int, default=384)
    ap.add_argument("--n-layer", type=int, default=8)
    ap.add_argument("--d-state", type=int, default=128)
    ap.add_argument("--headdim", type=int, default=64)
    ap.add_argument("--vocab", type=int, default=8192)
    ap.add_argument("--chunk", type=int, default=64)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--ctx", type=int, default=256)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--arch", default="mamba2", choices=["mamba2", "gla"],
                    help="gla: --d-model/--n-layer as hidden_size/num_hidden_layers, plus --heads, "
                    "--sub-chunk, --no-conv")
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--sub-chunk", type=int, default=8)
    ap.add_argument("--no-conv", action="store_true")
    a = ap.parse_args(argv)
    dev = pick_device(a.device)
    torch.manual_seed(0)
    if a.arch == "gla":
        from gla import GLAConfig, GLALM
        cfg = GLAConfig(hidden_size=a.d_model, num_hidden_layers=a.n_layer, num_heads=a.heads,
                        vocab_size=a.vocab, chunk_size=a.chunk, sub_chunk=a.sub_chunk,
                        use_short_conv=not a.no_conv)
        model = GLALM(cfg).init_weights(0).to(dev)
    else:
        cfg = ModelConfig(d_model=a.d_model, n_layer=a.n_layer, d_state=a.d_state,
                          headdim=a.headdim, vocab_size=a.vocab, chunk_size=a.chunk)
        model = Mamba2LM(cfg).init_weights(0).to(dev)
    ta = TrainArgs(compile=a.compile, warmup=1)
    opt = make_optimizer(model, ta, dev)
    fwd = torch.compile(model) if a.compile else model
    x = torch.randint(0, a.vocab, (a.batch, a.ctx + 1), device=dev)
    print(f"bench: {model.n_params() / 1e6:.2f}M params, batch {a.batch} x ctx {a.ctx}, {dev}")
    for i in range(a.steps + 3):
        if i == 3:
            if dev.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.time()
        with autocast_ctx(ta, dev):
            logits, _ = fwd(x[:, :-1])
            loss = lm_loss(logits, x[:, 1:])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    if dev.type == "cuda":
        torch.cuda.synchronize()
        mem = torch.cuda.max_memory_allocated() / 2 ** 30
    else:
        mem = float("nan")
    dt = time.time() - t0
    print(f"bench: {a.steps * a.batch * a.ctx / dt / 1e3:.1f}k tokens/s, "
          f"{dt / a.steps * 1e3:.1f} ms/step, peak mem {mem:.1f} GiB, loss {loss.item():.3f}")


if __name__ == "__main__":
    bench()
