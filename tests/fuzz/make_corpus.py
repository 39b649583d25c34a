#!/usr/bin/env python3
"""Write the seed corpora of the fuzz targets (deterministic; re-run to
regenerate). Each file is a regression input replayed by CTest.

fuzz_snapshot_load: byte 0 is the target's mode (odd = fix up fingerprint
and checksum), then a snapshot for the target's model (Mamba-2, d_model 16,
2 layers, d_inner 32, headdim 8, d_state 8, d_conv 4; layout in
core/state.h and proto/SNAPSHOT.md).
fuzz_request_json: request bodies, valid and malformed (docs/reliability.md B1/B2/B4).
fuzz_http: raw bytes of one client connection (requests, pipelines,
smuggling attempts, bad framing, preflights), sent as is to the server.

Usage: make_corpus.py [OUT_DIR]   (default: tests/fuzz/corpus)
"""
import json
import os
import random
import struct
import sys

D_MODEL, N_LAYER, D_INNER, HEADDIM, D_STATE, D_CONV = 16, 2, 32, 8, 8, 4
CONV_DIM = D_INNER + 2 * D_STATE
SSM_PER_LAYER = (D_INNER // HEADDIM) * HEADDIM * D_STATE


def payload(pos=7, has_last=1, n_layer=N_LAYER, fill=0.5, nan_at=None):
    head = struct.pack("<8I", 1, 2, n_layer, D_MODEL, CONV_DIM, D_CONV, SSM_PER_LAYER, has_last)
    head += struct.pack("<q", pos)
    n = D_MODEL + n_layer * ((D_CONV - 1) * CONV_DIM + SSM_PER_LAYER)
    vals = [fill * ((i % 7) - 3) for i in range(n)]
    if nan_at is not None:
        vals[nan_at] = float("nan")
    return head + struct.pack(f"<{n}f", *vals)


def snapshot(p, version=1, fp=0, declared=None):
    head = b"RECURSNP" + struct.pack("<IQQ", version, fp, len(p) if declared is None else declared)
    body = head + p
    return body + struct.pack("<Q", 0)  # checksum: fixed up by mode 1, wrong in mode 0


def snapshot_corpus(out):
    files = {}
    good = snapshot(payload())
    files["valid_fixup"] = b"\x01" + good
    files["valid_zero_state_fixup"] = b"\x01" + snapshot(payload(pos=0, has_last=0, fill=0))
    files["raw_no_fixup"] = b"\x00" + good
    files["empty"] = b""
    files["mode_only"] = b"\x01"
    files["magic_only"] = b"\x01RECURSNP"
    for cut in (1, 8, 12, 27, 28, 36, 60, len(good) // 2, len(good) - 9, len(good) - 1):
        files[f"truncated_{cut}"] = b"\x01" + good[:cut]
    files["padded"] = b"\x01" + good + b"\x00" * 16
    files["future_version"] = b"\x01" + snapshot(payload(), version=2)
    files["declared_huge"] = b"\x01" + snapshot(payload(), declared=0xFFFFFFF0)
    files["declared_u64max"] = b"\x01" + snapshot(payload(), declared=2 ** 64 - 1)
    files["wrong_n_layer"] = b"\x01" + snapshot(payload(n_layer=3))
    files["nan_in_state"] = b"\x01" + snapshot(payload(nan_at=40))
    files["negative_pos"] = b"\x01" + snapshot(payload(pos=-5))
    bad_hdr = bytearray(payload())
    bad_hdr[0:4] = struct.pack("<I", 9)  # state layout version
    files["layout_version"] = b"\x01" + snapshot(bytes(bad_hdr))
    rnd = random.Random(1)
    for i in range(12):
        b = bytearray(good)
        for _ in range(rnd.choice((1, 2))):
            b[rnd.randrange(len(b))] ^= 1 << rnd.randrange(8)
        files[f"flip_{i}"] = bytes([rnd.choice((0, 1))]) + bytes(b)
    return files


def json_corpus(out):
    bodies = [
        {"text": "hello", "logprobs": True, "top_logprobs": 2},
        {"tokens": [1, 2, 3]},
        {"max_tokens": 5, "temperature": 0.5, "top_k": 4, "top_p": 0.9, "min_p": 0.1,
         "seed": 3, "stop": ["\n", "x"], "stream": True, "commit": False},
        {"model": "m", "prompt": "Hi", "max_tokens": 3, "logprobs": 1, "echo": True,
         "stream_options": {"include_usage": True}, "n": 1, "logit_bias": {}},
        {"prompt": [[1, 2]]},
        {"fork_of": "0" * 32},
        {"snapshot": "good-name.v1"},
        {"name": "../etc/passwd"},
        {"text": "ok", "with_pieces": True},
        {"tokens": [-1, 50277, 2 ** 40]},
        {"max_tokens": "10", "temperature": -1, "top_p": 2},
        {"stop": [1, ""], "bogus": None},
    ]
    files = {f"valid_{i}": json.dumps(b).encode() for i, b in enumerate(bodies)}
    raw = [b'{"a":', b'{} x', b'[1 2]', b'"s"', b'{"a":"\xff"}', b'{"a":"\\u0000"}',
           b'{"a":1,"a":2}', b'{"a":1e999}', b'{"a":9223372036854775808}', b'{"a":-0}',
           b'{"a":"\\ud800"}', b'{"a":' + b'[' * 200 + b']' * 200 + b'}', b'',
           b'{"' + b'k' * 5000 + b'":1}']
    for i, r in enumerate(raw):
        files[f"raw_{i}"] = r
    return files


def http_corpus():
    def req(method, path, headers=b"", body=b""):
        return (method + b" " + path + b" HTTP/1.1\r\nHost: x\r\n" + headers + b"\r\n" + body)
    json_h = b"Content-Type: application/json\r\n"
    tok = b'{"text": "hi"}'
    cl = b"Content-Length: %d\r\n" % len(tok)
    smuggled = req(b"GET", b"/v1/models")
    chunk = b"%x\r\n" % len(tok) + tok + b"\r\n0\r\n\r\n"
    gen = b'{"prompt": "a", "max_tokens": 4, "stream": true}'
    return {
        "health": req(b"GET", b"/health"),
        "models_keepalive_pipeline": req(b"GET", b"/v1/models") + req(b"GET", b"/health"),
        "tokenize": req(b"POST", b"/v1/tokenize", json_h + cl, tok),
        "tokenize_chunked": req(b"POST", b"/v1/tokenize",
                                json_h + b"Transfer-Encoding: chunked\r\n", chunk),
        "session_generate": req(b"POST", b"/v1/sessions", json_h + b"Content-Length: 2\r\n",
                                b"{}") +
                            req(b"POST", b"/v1/completions", json_h + b"Content-Length: %d\r\n"
                                % len(gen), gen),
        "smuggle_two_cl": req(b"POST", b"/v1/tokenize", json_h + cl +
                              b"Content-Length: %d\r\n" % (len(tok) + len(smuggled)),
                              tok + smuggled),
        "smuggle_cl_te": req(b"POST", b"/v1/tokenize", json_h + b"Content-Length: 4\r\n"
                             b"Transfer-Encoding: chunked\r\n", chunk + smuggled),
        "smuggle_te_cl": req(b"POST", b"/v1/tokenize", json_h + b"Transfer-Encoding: chunked"
                             b"\r\nContent-Length: 4\r\n", chunk + smuggled),
        "te_gzip": req(b"POST", b"/v1/tokenize", json_h + b"Transfer-Encoding: gzip\r\n", tok),
        "cl_list": req(b"POST", b"/v1/tokenize", json_h + b"Content-Length: 14, 14\r\n", tok),
        "cl_plus": req(b"POST", b"/v1/tokenize", json_h + b"Content-Length: +14\r\n", tok),
        "body_cut_short": req(b"POST", b"/v1/score", json_h + b"Content-Length: 100\r\n",
                              b'{"text"'),
        "chunked_cut_short": req(b"POST", b"/v1/score", json_h + b"Transfer-Encoding: chunked"
                                 b"\r\n", b"5\r\n{\"tex"),
        "preflight": req(b"OPTIONS", b"/v1/completions", b"Origin: https://a.example\r\n"
                         b"Access-Control-Request-Method: POST\r\n"
                         b"Access-Control-Request-Headers: authorization, content-type\r\n"),
        "request_id": req(b"GET", b"/nope", b"X-Request-Id: " + b"a" * 200 + b"\r\n"
                          b"Origin: https://a.example\r\n"),
        "put_state_wrong_size": req(b"PUT", b"/v1/sessions/x/state",
                                    b"Content-Type: application/octet-stream\r\n"
                                    b"Content-Length: 4096\r\n", b"\0" * 4096),
        "bad_request_line": b"GET /\x00 HTTP/1.1\r\n\r\n",
        "http10_no_host": b"GET /health HTTP/1.0\r\n\r\n",
        "garbage": bytes(range(256)),
    }


def write(d, files):
    os.makedirs(d, exist_ok=True)
    for name, data in files.items():
        with open(os.path.join(d, name), "wb") as f:
            f.write(data)


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(
        os.path.abspath(__file__)), "corpus")
    write(os.path.join(out, "fuzz_snapshot_load"), snapshot_corpus(out))
    write(os.path.join(out, "fuzz_request_json"), json_corpus(out))
    write(os.path.join(out, "fuzz_http"), http_corpus())


if __name__ == "__main__":
    main()
