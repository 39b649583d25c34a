"""Streaming a multi-MB file into a session: read incrementally (bounded
client memory, progress reported), and the same result as appending the
same text in pieces.

What the server guarantees (docs/server.md, docs/engine.md): a streamed
text/plain append equals one JSON append of the same text bit for bit, and
a session's rows and state are bit-identical whatever the chunking of its
input. The test model is byte-level, so any cut of the text gives the same
tokens. So the states must be byte-identical and the per-token scores
equal; only the totals are summed in a different order (the server sums
each request, combine_scores sums the requests' sums), so nll_sum and the
bucket means are compared to a relative 1e-9.

The file is 2 MiB; under the sanitizers (RECUR_SANITIZED=1, set by CTest in
an ASan build), where the server reads ~50x slower, 96 KiB.
"""
import io
import math
import os
import random
import time
import tracemalloc

import pytest

import recur_client
from recur_client import combine_scores
from conftest import MORE, TEXT

CHUNK = 64 * 1024
BIG = (96 << 10) + 123 if os.environ.get("RECUR_SANITIZED") == "1" else (2 << 20) + 12345
WORDS = ("the river stone light morning ancient quiet they walked towards city café "
         "naïve über 東京 ☕ — and of to in").split()


def write_doc(path, size, seed=7):
    """About size bytes of word salad with multi-byte characters, written
    line by line; returns the exact byte count."""
    rng = random.Random(seed)
    n = 0
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        while n < size:
            line = " ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 16))) + ".\n"
            f.write(line)
            n += len(line.encode())
    return n


def char_cuts(data, step):
    """Cut UTF-8 bytes into ~step-byte pieces, each a whole number of characters."""
    out, i = [], 0
    while i < len(data):
        j = min(i + step, len(data))
        while j < len(data) and (data[j] & 0xC0) == 0x80:
            j += 1
        out.append(data[i:j].decode("utf-8"))
        i = j
    return out


def test_stream_file_equals_pieces(client, tmp_path):
    path = tmp_path / "book.txt"
    size = write_doc(path, BIG)  # not a multiple of the chunk
    a = client.create_session()
    calls = []
    tracemalloc.start()
    try:
        r = client.append_file(a, str(path), chunk_size=CHUNK,
                               progress=lambda sent, total: calls.append((sent, total)))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # incremental: the client never held the file (peak includes the 64 KiB
    # chunk, its chunked-encoding copy and the JSON answer)
    assert peak < 8 * CHUNK, "client memory peaked at %d bytes for a %d-byte file" % (peak, size)
    assert len(calls) == -(-size // CHUNK)
    assert [s for s, _ in calls] == sorted(set(s for s, _ in calls))  # strictly increasing
    assert calls[-1] == (size, size) and all(t == size for _, t in calls)
    assert r.n_tokens == size and r.position == size and r.n_scored == size - 1
    assert client.get_session(a).position == size

    b = client.create_session()
    with open(path, "rb") as f:
        data = f.read()
    pieces = char_cuts(data, size // 7 + 1)  # cuts that fall anywhere, even inside words
    assert len(pieces) > 5
    parts = [client.append(b, p) for p in pieces]
    whole = combine_scores(parts)
    assert client.get_state(a) == client.get_state(b), "streamed state differs from pieces'"
    assert (whole.n_tokens, whole.n_scored, whole.position) == \
        (r.n_tokens, r.n_scored, r.position)
    assert math.isclose(whole.nll_sum, r.nll_sum, rel_tol=1e-9)
    assert math.isclose(whole.nll, r.nll, rel_tol=1e-9)
    assert [(x.start, x.end, x.n) for x in whole.buckets] == \
        [(x.start, x.end, x.n) for x in r.buckets]
    for x, y in zip(whole.buckets, r.buckets):
        assert math.isclose(x.nll, y.nll, rel_tol=1e-9), (x, y)
    # and both continue identically
    assert client.append(a, MORE, logprobs=True).raw == client.append(b, MORE, logprobs=True).raw
    ga = client.generate(a, max_tokens=12, temperature=0.8, seed=4)
    gb = client.generate(b, max_tokens=12, temperature=0.8, seed=4)
    assert ga.tokens == gb.tokens
    client.delete_session(a)
    client.delete_session(b)


class CountingReader(io.RawIOBase):
    """A file object that records how it is read."""

    def __init__(self, data):
        self.data, self.at, self.reads = data, 0, []

    def readable(self):
        return True

    def read(self, n=-1):
        self.reads.append(n)
        if n is None or n < 0:
            n = len(self.data) - self.at
        out = self.data[self.at:self.at + n]
        self.at += len(out)
        return out


def test_file_object_read_in_chunks(client):
    body = ((TEXT + MORE + " café ☕ 東京\n") * 60).encode()
    f = CountingReader(body)
    s = client.create_session()
    seen = []
    r = client.append_file(s, f, chunk_size=1000, logprobs=True,
                           progress=lambda sent, total: seen.append((sent, total)))
    assert set(f.reads) == {1000} and len(f.reads) == -(-len(body) // 1000) + 1
    assert seen[-1] == (len(body), None)  # no size known for this object
    ctl = client.create_session()
    j = client.append(ctl, body.decode(), logprobs=True)
    assert r.raw == j.raw and client.get_state(s) == client.get_state(ctl)


def test_append_stream_pieces_split_characters(client):
    text = TEXT + " naïve café — 東京 🙂 " + MORE
    raw = text.encode()
    s, ctl = client.create_session(), client.create_session()
    # byte pieces that cut inside multi-byte characters, an empty piece, a str
    pieces = [raw[i:i + 5] for i in range(0, len(raw), 5)]
    assert any(p[:1] and (p[0] & 0xC0) == 0x80 for p in pieces)  # a cut character
    pieces[3:3] = [b""]
    pieces.append("…and a str piece")
    r = client.append_stream(s, iter(pieces), logprobs=True, top_logprobs=2)
    j = client.append(ctl, text + "…and a str piece", logprobs=True, top_logprobs=2)
    assert r.raw == j.raw
    assert client.get_state(s) == client.get_state(ctl)
    # a text-mode file object sends its str chunks as UTF-8
    s2 = client.create_session()
    r2 = client.append_file(s2, io.StringIO(text + "…and a str piece"), chunk_size=7,
                            logprobs=True, top_logprobs=2)
    assert r2.raw == j.raw


def test_empty_upload(client):
    s = client.create_session()
    r = client.append_file(s, io.BytesIO(b""))
    assert (r.n_tokens, r.n_scored, r.position, r.nll) == (0, 0, 0, None)
    assert isinstance(r, recur_client.ScoreResult)


def test_callback_exception_propagates_and_closes(client):
    """An exception from the progress callback (or the chunks' iterable)
    reaches the caller, and no socket is left open (the autouse check)."""
    s = client.create_session()

    def boom(sent, total):
        raise KeyError("stop here")

    with pytest.raises(KeyError):
        client.append_file(s, io.BytesIO(b"abc" * 1000), chunk_size=100, progress=boom)

    def chunks():
        yield b"abc"
        raise ValueError("bad source")

    with pytest.raises(ValueError):
        client.append_stream(s, chunks())
    # the server drops the unfinished upload; what reached it may have been read
    end = time.time() + 10
    while client.get_session(s).busy and time.time() < end:
        time.sleep(0.05)
    assert client.append(s, "x").n_tokens == 1
