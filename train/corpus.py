"""Corpus: Gutenberg books -> tokenizer -> uint16 token arrays -> training batches.

The corpus file (train.txt.xz) holds books, each followed by a line `<|endoftext|>`.
Validation books are the n_val books whose SHA-1 (of their text) sorts first, so the
split is a function of the books themselves: a subset file that keeps those books
(see `subset` below) yields the same validation set.

Tokenizer: byte-level BPE learned with HF `tokenizers` (NFC normaliser, GPT-2 regex
byte-level pre-tokenizer, `<|endoftext|>` = id 0), the same shape as GPT-NeoX's
tokenizer.json. `--mock-hf` swaps in a byte tokenizer (256 byte symbols, no merges,
written as a valid tokenizer.json) for CPU dry runs where `tokenizers` is missing;
everything around it is the same code.

CLI (local, no HF needed):
  python3 train/corpus.py subset --src train.txt.xz --out .data/post.txt.xz --max-bytes 8e7
"""
import argparse
import hashlib
import json
import lzma
import os
import sys
import time
import unicodedata

import numpy as np
import torch

EOT = "<|endoftext|>"
SEP = "\n" + EOT + "\n"


# ------------------------------------------------------------------ books
def read_text(path):
    if not os.path.exists(path):
        raise SystemExit(f"missing input: {path}")
    opener = lzma.open if path.endswith(".xz") else open
    with opener(path, "rt", encoding="utf-8", newline="") as f:
        return f.read()


def split_books(text):
    parts = text.split(SEP)
    if parts and parts[-1].strip() == "":
        parts.pop()
    return [p for p in parts if p.strip()]


def book_key(book):
    return hashlib.sha1(book.encode("utf-8")).hexdigest()


def split_val(books, n_val):
    """-> (train_indices, val_indices), both in file order."""
    order = sorted(range(len(books)), key=lambda i: book_key(books[i]))
    val = sorted(order[:n_val])
    vs = set(val)
    return [i for i in range(len(books)) if i not in vs], val


# -------------------------------------------------------------- tokenizer
def _bytes_to_unicode():
    """GPT-2's byte -> printable character map used by byte-level BPE."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("\xa1"), ord("\xac") + 1)) \
        + list(range(ord("\xae"), ord("\xff") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


class ByteTokenizer:
    """Mock for CPU dry runs: id 0 = <|endoftext|>, ids 1..256 = bytes. No merges."""

    def __init__(self, vocab):
        b2u = _bytes_to_unicode()
        self.byte_id = np.zeros(256, dtype=np.int64)
        for b, ch in b2u.items():
            self.byte_id[b] = vocab[ch]
        self.id_byte = {int(i): b for b, i in enumerate(self.byte_id)}
        self.vocab_size = len(vocab)
        self.eot_id = vocab[EOT]
        self.kind = "mock-bytes"

    @staticmethod
    def write(path):
        vocab = {EOT: 0}
        for b, ch in sorted(_bytes_to_unicode().items()):
            vocab[ch] = b + 1
        j = {"version": "1.0", "truncation": None, "padding": None,
             "added_tokens": [{"id": 0, "content": EOT, "single_word": False, "lstrip": False,
                               "rstrip": False, "normalized": False, "special": True}],
             "normalizer": {"type": "NFC"},
             "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False,
                               "trim_offsets": True, "use_regex": True},
             "post_processor": {"type": "ByteLevel", "add_prefix_space": False,
                                "trim_offsets": True, "use_regex": True},
             "decoder": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
                         "use_regex": True},
             "model": {"type": "BPE", "dropout": None, "unk_token": None,
                       "continuing_subword_prefix": None, "end_of_word_suffix": None,
                       "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                       "vocab": vocab, "merges": []}}
        with open(path, "w", encoding="utf-8") as f:
            json.dump(j, f, ensure_ascii=False)

    @classmethod
    def load(cls, path):
        with open(path, encoding="utf-8") as f:
            j = json.load(f)
        vocab = dict(j["model"]["vocab"])
        for t in j["added_tokens"]:
            vocab[t["content"]] = t["id"]
        return cls(vocab)

    def encode_batch(self, texts):
        out = []
        for t in texts:
            b = np.frombuffer(unicodedata.normalize("NFC", t).encode("utf-8"), dtype=np.uint8)
            out.append(self.byte_id[b].tolist())
        return out

    def decode(self, ids):
        return bytes(self.id_byte[i] for i in ids if i in self.id_byte).decode("utf-8", "replace")


class HFTokenizer:
    """HF `tokenizers` (device). Imported lazily so the rest runs without it."""

    def __init__(self, tok):
        self.tok = tok
        self.vocab_size = tok.get_vocab_size()
        self.eot_id = tok.token_to_id(EOT)
        if self.eot_id is None:
            raise ValueError(f"tokenizer has no {EOT}")
        import tokenizers
        self.kind = f"tokenizers {tokenizers.__version__}"

    @classmethod
    def load(cls, path):
        from tokenizers import Tokenizer
        return cls(Tokenizer.from_file(path))

    @staticmethod
    def learn(texts, vocab_size, path):
        from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
        tok = Tokenizer(models.BPE())
        tok.normalizer = normalizers.NFC()
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        tok.decoder = decoders.ByteLevel()
        try:  # GPT-NeoX's tokenizer.json has one; it only adjusts offsets
            from tokenizers import processors
            tok.post_processor = processors.ByteLevel(trim_offsets=True)
        except Exception as e:  # noqa: BLE001 - optional nicety, never fatal
            print(f"note: no ByteLevel post-processor ({e})")
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2,
                                      special_tokens=[EOT], show_progress=False,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
        tok.train_from_iterator(texts, trainer=trainer, length=len(texts))
        tok.save(path)

    def encode_batch(self, texts):
        fast = getattr(self.tok, "encode_batch_fast", None)  # no offsets: faster (>= 0.21)
        encs = fast(texts) if fast is not None else self.tok.encode_batch(texts)
        return [e.ids for e in encs]

    def decode(self, ids):
        return self.tok.decode(list(ids), skip_special_tokens=False)


def load_tokenizer(path, mock):
    if not os.path.exists(path):
        raise SystemExit(f"missing tokenizer: {path}")
    return ByteTokenizer.load(path) if mock else HFTokenizer.load(path)


def learn_tokenizer(books, vocab_size, path, max_bytes, mock):
    """Learn on books (in SHA-1 order) up to max_bytes of text; write tokenizer.json."""
    picked, n = [], 0
    for b in sorted(books, key=book_key):
        if n >= max_bytes:
            break
        picked.append(b)
        n += len(b)
    if mock:
        ByteTokenizer.write(path)
    else:
        HFTokenizer.learn(picked, vocab_size, path)
    tok = load_tokenizer(path, mock)
    sample = "Hello, world! \u00c9t\u00e9 \u2014 \u201cquoted\u201d\n\n  CHAPTER I.\n"
    ids = tok.encode_batch([sample])[0]
    back = tok.decode(ids)
    if back != unicodedata.normalize("NFC", sample):  # loud, but not worth losing the run
        print(f"WARNING: tokenizer round trip differs: {sample!r} -> {back!r}", flush=True)
    return tok, n


def encode_books(tok, books, batch=64):
    """-> uint16 array: each book's ids followed by <|endoftext|>."""
    if tok.vocab_size > 65535:
        raise ValueError("vocab does not fit uint16")
    parts = []
    eot = np.array([tok.eot_id], dtype=np.uint16)
    for i in range(0, len(books), batch):
        for ids in tok.encode_batch(books[i:i + batch]):
            parts.append(np.asarray(ids, dtype=np.uint16))
            parts.append(eot)
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.uint16)


def array_sha256(a):
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()


# --------------------------------------------------------------- batches
class WindowSampler:
    """Random windows of ctx+1 tokens (inputs = w[:-1], targets = w[1:]).
    Offsets come from a CPU generator so the order is the same on any device."""

    def __init__(self, tokens, ctx, batch, seed, device):
        self.tokens = torch.from_numpy(tokens.astype(np.int64)).to(device)
        self.n = len(tokens)
        if self.n < ctx + 2:
            raise ValueError(f"{self.n} tokens is too few for ctx {ctx}")
        self.ctx, self.batch, self.device = ctx, batch, device
        self.g = torch.Generator().manual_seed(seed)
        self.ar = torch.arange(ctx + 1, device=device)

    def next(self):
        offs = torch.randint(0, self.n - self.ctx - 1, (self.batch,), generator=self.g)
        w = self.tokens[offs.to(self.device)[:, None] + self.ar]
        return w[:, :-1], w[:, 1:], None


class StreamSampler:
    """TBTT: row i reads its own contiguous stream, ctx tokens per batch. A row that runs
    off the end restarts at a random place; `reset` tells which rows must start from zero."""

    def __init__(self, tokens, ctx, batch, seed, device):
        self.tokens = torch.from_numpy(tokens.astype(np.int64)).to(device)
        self.n = len(tokens)
        self.ctx, self.batch, self.device = ctx, batch, device
        self.g = torch.Generator().manual_seed(seed)
        self.pos = torch.randint(0, self.n - ctx - 1, (batch,), generator=self.g)
        self.ar = torch.arange(ctx + 1, device=device)

    def next(self):
        over = self.pos + self.ctx + 1 > self.n
        if over.any():
            self.pos[over] = torch.randint(0, self.n - self.ctx - 1, (int(over.sum()),),
                                           generator=self.g)
        w = self.tokens[self.pos.to(self.device)[:, None] + self.ar]
        self.pos = self.pos + self.ctx
        return w[:, :-1], w[:, 1:], over.to(self.device)


def fixed_windows(tokens, ctx, n, seed):
    """n deterministic windows of ctx+1 tokens (validation)."""
    g = torch.Generator().manual_seed(seed)
    offs = torch.randint(0, len(tokens) - ctx - 1, (n,), generator=g)
    t = torch.from_numpy(tokens.astype(np.int64))
    return t[offs[:, None] + torch.arange(ctx + 1)]


# ------------------------------------------------------------------ prep
def prepare(corpus, n_val, tok_path, mock, learn=False, vocab_size=8192, tok_bytes=48e6,
            max_books=None, log=print):
    """Read, split, (learn,) encode. Returns dict with tok, train, val arrays, stats."""
    t0 = time.time()
    books = split_books(read_text(corpus))
    if max_books:
        books = books[:max_books]
    tr, va = split_val(books, n_val)
    log(f"corpus {corpus}: {len(books)} books, {sum(map(len, books)) / 1e6:.1f} MB text, "
        f"{len(va)} validation books ({time.time() - t0:.1f}s)")
    train_books = [books[i] for i in tr]
    val_books = [books[i] for i in va]
    t1 = time.time()
    if learn:
        tok, nb = learn_tokenizer(train_books, vocab_size, tok_path, tok_bytes, mock)
        log(f"tokenizer learned on {nb / 1e6:.1f} MB: vocab {tok.vocab_size} ({tok.kind}) "
            f"in {time.time() - t1:.1f}s")
    else:
        tok = load_tokenizer(tok_path, mock)
    t2 = time.time()
    train = encode_books(tok, train_books)
    val = encode_books(tok, val_books)
    nbytes = sum(map(len, train_books))
    log(f"encoded {len(train) / 1e6:.2f}M train + {len(val) / 1e6:.3f}M val tokens "
        f"({nbytes / max(1, len(train)):.2f} chars/token) in {time.time() - t2:.1f}s")
    return {"tok": tok, "train": train, "val": val, "n_books": len(books),
            "val_titles": [b.strip().split("\n")[0][:80] for b in val_books],
            "val_sha256": array_sha256(val), "train_sha256": array_sha256(train),
            "text_bytes": nbytes}


def subset(src, out, max_bytes, n_val, preset=6):
    """Write a corpus file holding all validation books plus training books (SHA-1 order)
    up to max_bytes of text, in the source's order: a smaller upload for call 2."""
    books = split_books(read_text(src))
    tr, va = split_val(books, n_val)
    keep, n = set(va), sum(len(books[i]) for i in va)
    for i in sorted(tr, key=lambda i: book_key(books[i])):
        if n >= max_bytes:
            break
        keep.add(i)
        n += len(books[i])
    text = "".join(books[i] + SEP for i in sorted(keep))
    tmp = out + ".tmp"
    with lzma.open(tmp, "wt", encoding="utf-8", newline="", preset=preset) as f:
        f.write(text)
    os.replace(tmp, out)
    print(f"{out}: {len(keep)} of {len(books)} books ({len(va)} validation), "
          f"{n / 1e6:.1f} MB text, {os.path.getsize(out) / 1e6:.1f} MB xz")


def main(argv=None):
    ap = argparse.ArgumentParser(description="corpus tools")
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("subset", help="smaller corpus file for call 2")
    s.add_argument("--src", required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--max-bytes", type=float, default=8e7)
    s.add_argument("--n-val", type=int, default=6)
    s.add_argument("--preset", type=int, default=6)
    a = ap.parse_args(argv)
    if a.cmd == "subset":
        subset(a.src, a.out, a.max_bytes, a.n_val, a.preset)


if __name__ == "__main__":
    sys.exit(main())
