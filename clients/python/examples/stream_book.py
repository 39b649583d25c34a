#!/usr/bin/env python3
"""Stream a text file of any size into a recurd session, print its
perplexity by position bucket, then generate a continuation.

    recurd serve --model models/recur-sp &
    clients/python/examples/stream_book.py book.txt

The file is uploaded as one chunked text/plain append, read 64 KiB at a
time (memory use does not grow with the file). RECURD_URL and
RECURD_API_KEY are read from the environment unless --url / --api-key
are given.
"""
import argparse
import os
import sys
import time
from typing import Optional

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from recur_client import Client, RecurError  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("file", help="a UTF-8 text file")
    ap.add_argument("--url", help="server URL (default $RECURD_URL or http://127.0.0.1:8080)")
    ap.add_argument("--api-key", help="Bearer key (default $RECURD_API_KEY)")
    ap.add_argument("--max-tokens", type=int, default=64, help="tokens to generate (64)")
    ap.add_argument("--temperature", type=float, default=0.8, help="sampling temperature (0.8)")
    ap.add_argument("--seed", type=int, default=1, help="sampling seed (1)")
    ap.add_argument("--chunk-size", type=int, default=64 * 1024, help="upload chunk bytes")
    ap.add_argument("--keep", action="store_true", help="keep the session (print its id)")
    ap.add_argument("--quiet", action="store_true", help="no progress on stderr")
    a = ap.parse_args()

    c = Client(a.url, api_key=a.api_key)
    try:
        m = c.model()
        print("model %s: %s, %d layers, d_model %d, vocab %d, state %d bytes"
              % (m.id, m.arch, m.n_layer, m.d_model, m.vocab_size, m.state_bytes))
        s = c.create_session()
        try:
            return run(c, s.id, a)
        finally:
            if a.keep:
                print("session kept: %s" % s.id)
            else:
                c.delete_session(s)
    except RecurError as e:
        print("error: %s" % e, file=sys.stderr)
        return 1
    except OSError as e:
        print("error: %s" % e, file=sys.stderr)
        return 1


def run(c: Client, sid: str, a: argparse.Namespace) -> int:
    t0 = time.monotonic()
    last = [0.0]

    def progress(sent: int, total: Optional[int] = None) -> None:
        now = time.monotonic()
        if a.quiet or (now - last[0] < 0.5 and sent != total):
            return
        last[0] = now
        pct = " (%.0f%%)" % (100.0 * sent / total) if total else ""
        print("\rsent %.1f MiB%s" % (sent / 2**20, pct), end="", file=sys.stderr, flush=True)

    r = c.append_file(sid, a.file, chunk_size=a.chunk_size, progress=progress)
    secs = time.monotonic() - t0
    if not a.quiet:
        print(file=sys.stderr)
    print("read %d tokens in %.1f s (%.0f tokens/s), session at position %d"
          % (r.n_tokens, secs, r.n_tokens / secs if secs > 0 else 0.0, r.position))
    if r.nll is None:
        print("nothing scored (the file has fewer than 2 tokens)")
    else:
        print("nll %.4f nats/token, perplexity %.3f over %d predictions"
              % (r.nll, r.ppl, r.n_scored))
    print("perplexity by position:")
    print("  %-20s %10s %8s %10s" % ("positions", "n", "nll", "ppl"))
    for b in r.buckets:
        print("  %-20s %10d %8.4f %10.3f" % ("[%d, %d)" % (b.start, b.end), b.n, b.nll, b.ppl))
    if r.position == 0:
        return 0
    print("continuation (%d tokens, temperature %g, seed %d):"
          % (a.max_tokens, a.temperature, a.seed))
    with c.generate_stream(sid, max_tokens=a.max_tokens, temperature=a.temperature,
                           seed=a.seed) as st:
        for ev in st:
            if ev.text:
                sys.stdout.write(ev.text)
                sys.stdout.flush()
    d = st.done
    print()
    print("[%d tokens, finish_reason %s, position %d]" % (d.n_tokens, d.finish_reason, d.position))
    return 0


if __name__ == "__main__":
    sys.exit(main())
