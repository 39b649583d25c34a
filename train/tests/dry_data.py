"""Tiny corpus + evaluation books for CPU dry runs, cut from the real data when
/work/shared is there (else synthetic prose), written only under a temp dir."""
import lzma
import os
import random

SHARED = os.environ.get("RECUR_SHARED", "/work/shared")
SEP = "\n<|endoftext|>\n"


def _real_books(n, chars):
    src = os.path.join(SHARED, "data", "gutenberg", "train.txt.xz")
    if not os.path.exists(src):
        return None
    books, cur = [], []
    with lzma.open(src, "rt", encoding="utf-8", newline="") as f:
        for line in f:
            if line == "<|endoftext|>\n":
                books.append("".join(cur)[:chars])
                cur = []
                if len(books) == n:
                    break
            elif sum(map(len, cur)) < chars:
                cur.append(line)
    return books


def _synthetic_books(n, chars, seed=0):
    rng = random.Random(seed)
    words = ("the of and to a in that he was it his her with as had for you she not but at on "
             "by which be they this from have all were were said one so an my me there would "
             "what their if when who will been no more out into up them then some could time "
             "man upon little great very about before old any only now like other than").split()
    books = []
    for i in range(n):
        s = []
        while sum(map(len, s)) < chars:
            sent = " ".join(rng.choice(words) for _ in range(rng.randint(5, 15)))
            s.append(sent.capitalize() + (".\n" if rng.random() < 0.2 else ". "))
        books.append(f"BOOK {i}\n\n" + "".join(s))
    return books


def make(root, n_books=24, chars=12000, n_eval=3, eval_chars=30000):
    books = _real_books(n_books + n_eval, max(chars, eval_chars)) or \
        _synthetic_books(n_books + n_eval, max(chars, eval_chars))
    d = os.path.join(root, ".data")
    os.makedirs(os.path.join(d, "dev_eval"), exist_ok=True)
    with lzma.open(os.path.join(d, "train.txt.xz"), "wt", encoding="utf-8", newline="") as f:
        f.write("".join(b[:chars] + SEP for b in books[:n_books]))
    for i, b in enumerate(books[n_books:]):
        with lzma.open(os.path.join(d, "dev_eval", f"book{i:02d}.txt.xz"), "wt",
                       encoding="utf-8", newline="") as f:
            f.write(b[:eval_chars])
    return d
