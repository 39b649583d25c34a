"""Sampled continuations of a Gutenberg-style prompt (for the model card).

Reads the prompt through the chunked forward, then samples token by token with the
recurrence (Mamba2LM.step), float32, nucleus sampling with temperature.
"""
import torch

PROMPT = ("CHAPTER I.\n\nIt was late in the autumn of the year when the coach from London set "
          "down a young man at the door of the old inn at Ashford. The rain had ceased, but the "
          "wind still blew cold across the market-place, and")

SETTINGS = {"temperature": 0.8, "top_p": 0.95, "max_new_tokens": 160, "seed": 20261128}


@torch.no_grad()
def continuations(model, tok, prompt=PROMPT, n=3, temperature=0.8, top_p=0.95,
                  max_new_tokens=160, seed=20261128, stop_at_eot=True):
    device = next(model.parameters()).device
    model.eval()
    ids = tok.encode_batch([prompt])[0]
    x = torch.tensor([ids] * n, dtype=torch.long, device=device)
    logits, states = model(x)
    last = logits[:, -1].float()
    g = torch.Generator(device=device).manual_seed(seed)
    outs = [[] for _ in range(n)]
    done = [False] * n
    for _ in range(max_new_tokens):
        p = torch.softmax(last / temperature, -1)
        sp, si = torch.sort(p, descending=True, dim=-1)
        cum = sp.cumsum(-1)
        sp = torch.where(cum - sp > top_p, torch.zeros_like(sp), sp)  # keep the top-p nucleus
        choice = torch.multinomial(sp / sp.sum(-1, keepdim=True), 1, generator=g)
        nxt = si.gather(1, choice)[:, 0]
        for i in range(n):
            if not done[i]:
                t = int(nxt[i])
                if stop_at_eot and t == tok.eot_id:
                    done[i] = True
                else:
                    outs[i].append(t)
        if all(done):
            break
        lg, states = model.step(nxt, states)
        last = lg.float()
    return prompt, ids, [tok.decode(o) for o in outs], outs


def as_markdown(prompt, texts, settings):
    s = ", ".join(f"{k} {v}" for k, v in settings.items())
    lines = [f"Prompt (ours), sampling: {s}.", "", "```text", prompt, "```", ""]
    for i, t in enumerate(texts, 1):
        lines += [f"Continuation {i}:", "", "```text", prompt + t, "```", ""]
    return "\n".join(lines)
