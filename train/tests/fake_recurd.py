#!/usr/bin/env python3
"""Stand-in for the recurd binary in tests of the evaluation scripts: emits the JSON shapes
of `recurd score --json` and `recurd effrem --json`, with made-up but deterministic numbers
(ppl depends on the model name and the bucket; the text's length sets the token count)."""
import json
import sys


def arg(name, default=None):
    a = sys.argv
    return a[a.index(name) + 1] if name in a else default


def main():
    cmd = sys.argv[1]
    model = arg("--model")
    text = open(arg("--text"), encoding="utf-8").read()
    n = len(text) // 4
    base = "base" in model
    if cmd == "score":
        buckets, k = [], 0
        while True:
            a, b = (0, 1) if k == 0 else (1 << (k - 1), 1 << k)
            if a >= n - 1:
                break
            cnt = min(b, n - 1) - a
            ppl = 20.0 if a < 256 else (20.0 * (1 + 0.5 * (k - 9)) if base else 19.5)
            buckets.append({"start": a, "end": b, "n": cnt, "ppl": ppl + (len(text) % 7) * 0.1})
            k += 1
        print(json.dumps({"n_tokens": n, "nll": 1.0, "ppl": 20.0, "token_logprobs": [-3.0] * 5,
                          "buckets": buckets}))
    elif cmd == "effrem":
        Ts = [int(x) for x in arg("--T").split(",")]
        P = int(arg("--points"))
        curves = [{"T": T, "points": [{"t": k * T // P, "tv": (0.3 if base else 0.03) * (1 - k / P)
                                       + (len(text) % 3) * 0.01} for k in range(P)]} for T in Ts]
        print(json.dumps({"curves": curves}))
    else:
        sys.exit(2)


if __name__ == "__main__":
    main()
