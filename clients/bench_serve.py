#!/usr/bin/env python3
"""Speed benchmark of recurd serve (issue 4's targets), as ratios measured
in one run on one machine:

  stream   a 128k-token document streamed into one session over HTTP
           (text/plain, chunked, scored) vs `recurd score` offline on the
           same tokens: target >= 0.9x
  batch    32 sessions generating at once vs one session alone, aggregate
           tokens/s: target >= 6x
  idle     what an idle session costs: target its state bytes + < 64 KiB
  rss      RSS while streaming 1M tokens into one session: target flat

Usage: clients/bench_serve.py [--bin build/server/recurd] [--model models/recur-sp]
         [--doc FILE] [--stream-tokens 131072] [--sessions 32] [--gen 128]
         [--rss-tokens 1000000] [--skip rss] [--json OUT]
The document defaults to shared/data/gutenberg/dev_eval/book00.txt.xz (if
/work/shared or ../shared has it), else the GPL-3 text repeated. Needs
python3-requests. Prints a Markdown report.
"""
import argparse
import json
import lzma
import os
import re
import subprocess
import sys
import tempfile
import threading
import time

import requests

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_doc(path):
    cands = [path] if path else [
        os.path.join(ROOT, "..", "shared", "data", "gutenberg", "dev_eval", "book00.txt.xz"),
        "/work/shared/data/gutenberg/dev_eval/book00.txt.xz",
        "/usr/share/common-licenses/GPL-3"]
    for p in cands:
        if p and os.path.exists(p):
            data = lzma.open(p).read() if p.endswith(".xz") else open(p, "rb").read()
            return p, data.decode("utf-8", "replace")
    sys.exit("no document found")


class Srv:
    def __init__(self, binary, model, *args):
        self.p = subprocess.Popen([binary, "serve", "--model", model, "--port", "0", "--quiet",
                                   *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.base = None
        for raw in self.p.stderr:
            m = re.search(rb"listening on (http://\S+)", raw)
            if m:
                self.base = m.group(1).decode()
                break
        threading.Thread(target=lambda: [None for _ in self.p.stderr], daemon=True).start()
        for _ in range(600):
            try:
                if requests.get(self.base + "/health", timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                pass
            time.sleep(0.1)

    def rss(self):
        with open(f"/proc/{self.p.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        return 0

    def post(self, path, body, **kw):
        r = requests.post(self.base + path, json=body, timeout=3600, **kw)
        r.raise_for_status()
        return r.json()

    def metric(self, name):
        t = requests.get(self.base + "/metrics", timeout=10).text
        return float(re.search(rf"^{name} (\S+)$", t, re.M).group(1))

    def stop(self):
        self.p.terminate()
        self.p.wait(60)


def bench_stream(a, srv, text_ids, text):
    """Offline score vs HTTP streaming of the same document."""
    with tempfile.NamedTemporaryFile("w", suffix=".ids", delete=False) as f:
        f.write(" ".join(map(str, text_ids)))
        ids_file = f.name
    off, http = [], []
    for _ in range(a.repeat):
        r = subprocess.run([a.bin, "score", "--model", a.model, "--tokens", ids_file, "--json",
                            "--max-details", "0"], capture_output=True, text=True, check=True)
        j = json.loads(r.stdout)
        off.append(j["n_tokens"] / j["seconds"])
        sid = srv.post("/v1/sessions", {})["id"]
        body = text.encode()

        def chunks():
            for i in range(0, len(body), 65536):
                yield body[i:i + 65536]
        t = time.perf_counter()
        r = requests.post(f"{srv.base}/v1/sessions/{sid}/append", data=chunks(),
                          headers={"Content-Type": "text/plain"}, timeout=3600)
        dt = time.perf_counter() - t
        r.raise_for_status()
        http.append(r.json()["n_tokens"] / dt)
        requests.delete(f"{srv.base}/v1/sessions/{sid}", timeout=60)
    os.unlink(ids_file)
    return {"tokens": len(text_ids), "offline_tok_s": max(off), "http_tok_s": max(http),
            "ratio": max(http) / max(off), "all_offline": off, "all_http": http}


def bench_batch(a, srv):
    prompt = "It was the best of times, it was the worst of times,"

    def one(sid, out, i):
        t = time.perf_counter()
        g = srv.post(f"/v1/sessions/{sid}/generate",
                     {"max_tokens": a.gen, "temperature": 0.8, "seed": i, "ignore_eos": True})
        out[i] = (g["n_tokens"], time.perf_counter() - t)

    ids = []
    for _ in range(a.sessions):
        sid = srv.post("/v1/sessions", {})["id"]
        srv.post(f"/v1/sessions/{sid}/append", {"text": prompt})
        ids.append(sid)
    out = [None]
    one(ids[0], out, 0)  # warm-up
    single = []
    for _ in range(a.repeat):
        out = [None]
        one(ids[0], out, 0)
        single.append(out[0][0] / out[0][1])
    multi = []
    for _ in range(a.repeat):
        out = [None] * a.sessions
        ts = [threading.Thread(target=one, args=(ids[i], out, i)) for i in range(a.sessions)]
        t = time.perf_counter()
        for th in ts:
            th.start()
        for th in ts:
            th.join()
        dt = time.perf_counter() - t
        multi.append(sum(n for n, _ in out) / dt)
    for sid in ids:
        requests.delete(f"{srv.base}/v1/sessions/{sid}", timeout=60)
    return {"sessions": a.sessions, "gen_tokens": a.gen, "single_tok_s": max(single),
            "aggregate_tok_s": max(multi), "ratio": max(multi) / max(single)}


def bench_idle(a, srv, state_bytes):
    n = a.idle
    alloc0, rss0 = srv.metric("recurd_alloc_bytes"), srv.rss()
    ids = [srv.post("/v1/sessions", {})["id"] for _ in range(n)]
    alloc1, rss1 = srv.metric("recurd_alloc_bytes"), srv.rss()
    for sid in ids:  # touch every state (a fresh one is lazily zeroed memory)
        srv.post(f"/v1/sessions/{sid}/append", {"tokens": [1]})
    alloc2, rss2 = srv.metric("recurd_alloc_bytes"), srv.rss()
    for sid in ids:
        requests.delete(f"{srv.base}/v1/sessions/{sid}", timeout=60)
    per_alloc = (alloc2 - alloc0) / n
    return {"sessions": n, "state_bytes": state_bytes,
            "alloc_per_session": per_alloc, "overhead_alloc": per_alloc - state_bytes,
            "rss_per_session_fresh": (rss1 - rss0) / n, "rss_per_session_used": (rss2 - rss0) / n,
            "overhead_rss_used": (rss2 - rss0) / n - state_bytes}


def bench_rss(a, srv, text):
    sid = srv.post("/v1/sessions", {})["id"]
    body = text.encode()
    # enough text for rss_tokens tokens at this document's bytes per token
    sample_text = text[:200000]
    n_sample = len(srv.post("/v1/tokenize", {"text": sample_text})["tokens"])
    bpt = len(sample_text.encode()) / max(1, n_sample)
    need = int(a.rss_tokens * bpt * 1.02)
    samples = []
    done = threading.Event()

    def sample():
        t0 = time.perf_counter()
        while not done.is_set():
            samples.append((time.perf_counter() - t0, srv.rss()))
            time.sleep(0.5)

    def chunks():
        sent = 0
        while sent < need:
            piece = body[: min(len(body), need - sent)]
            for i in range(0, len(piece), 65536):
                yield piece[i:i + 65536]
            sent += len(piece)
    th = threading.Thread(target=sample)
    th.start()
    t = time.perf_counter()
    r = requests.post(f"{srv.base}/v1/sessions/{sid}/append", data=chunks(),
                      headers={"Content-Type": "text/plain"}, timeout=7200)
    dt = time.perf_counter() - t
    done.set()
    th.join()
    r.raise_for_status()
    n = r.json()["n_tokens"]
    warm = [s for s in samples if s[0] > 0.1 * dt] or samples
    return {"tokens": n, "seconds": dt, "tok_s": n / dt, "rss_start": samples[0][1],
            "rss_first": warm[0][1], "rss_last": warm[-1][1],
            "rss_min": min(s[1] for s in warm), "rss_max": max(s[1] for s in warm),
            "samples": len(samples)}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bin", default=os.path.join(ROOT, "build", "server", "recurd"))
    ap.add_argument("--model", default=os.path.join(ROOT, "models", "recur-sp"))
    ap.add_argument("--doc")
    ap.add_argument("--stream-tokens", type=int, default=131072)
    ap.add_argument("--sessions", type=int, default=32)
    ap.add_argument("--gen", type=int, default=128)
    ap.add_argument("--idle", type=int, default=256)
    ap.add_argument("--rss-tokens", type=int, default=1000000)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--skip", action="append", default=[])
    ap.add_argument("--json")
    a = ap.parse_args()
    doc_path, doc = load_doc(a.doc)
    srv = Srv(a.bin, a.model)
    res = {"model": a.model, "doc": doc_path}
    try:
        m = requests.get(srv.base + "/v1/models", timeout=10).json()["data"][0]
        res["state_bytes"] = m["state_bytes"]
        ver = subprocess.run([a.bin, "version"], capture_output=True, text=True).stdout
        res["version"] = ver.strip().replace("\n", "; ")
        if "stream" not in a.skip:
            ids = srv.post("/v1/tokenize", {"text": doc})["tokens"]
            while len(ids) < a.stream_tokens:
                ids = ids + ids
            ids = ids[: a.stream_tokens]
            text = requests.post(srv.base + "/v1/detokenize", json={"tokens": ids},
                                 timeout=600).json()["text"]
            res["stream"] = bench_stream(a, srv, ids, text)
        if "batch" not in a.skip:
            res["batch"] = bench_batch(a, srv)
        if "idle" not in a.skip:
            res["idle"] = bench_idle(a, srv, m["state_bytes"])
    finally:
        srv.stop()
    if "rss" not in a.skip:
        # a fresh process: the idle test's freed states would otherwise
        # stay in the allocator's heap and hide what the stream does
        srv = Srv(a.bin, a.model)
        try:
            res["rss"] = bench_rss(a, srv, doc)
        finally:
            srv.stop()
    print(f"# recurd serve benchmark\n\nmodel `{a.model}`, document `{doc_path}`, "
          f"state {res['state_bytes']} bytes; {res['version']}\n")
    if "stream" in res:
        s = res["stream"]
        print(f"- stream {s['tokens']} tokens: offline `recurd score` {s['offline_tok_s']:.0f} "
              f"tok/s, HTTP chunked append {s['http_tok_s']:.0f} tok/s: **{s['ratio']:.2f}x** "
              f"(target >= 0.9)")
    if "batch" in res:
        b = res["batch"]
        print(f"- decode: 1 session {b['single_tok_s']:.0f} tok/s, {b['sessions']} sessions "
              f"{b['aggregate_tok_s']:.0f} tok/s aggregate: **{b['ratio']:.1f}x** (target >= 6)")
    if "idle" in res:
        i = res["idle"]
        print(f"- idle session ({i['sessions']} of them): allocator {i['alloc_per_session']:.0f} "
              f"bytes each = state + **{i['overhead_alloc']:.0f} B** (target < 65536); RSS "
              f"{i['rss_per_session_fresh']:.0f} B fresh (lazily zeroed), "
              f"{i['rss_per_session_used']:.0f} B once used")
    if "rss" in res:
        r = res["rss"]
        print(f"- {r['tokens']} tokens streamed into one session in {r['seconds']:.0f} s "
              f"({r['tok_s']:.0f} tok/s): RSS {r['rss_start'] / 2**20:.1f} MiB at the start; after "
              f"the first 10% {r['rss_min'] / 2**20:.1f}.."
              f"{r['rss_max'] / 2**20:.1f} MiB (first {r['rss_first'] / 2**20:.1f}, last "
              f"{r['rss_last'] / 2**20:.1f})")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
