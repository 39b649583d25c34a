"""recur's progress and output contracts (issue 12): the stream's bar fits
the terminal (TIOCGWINSZ, else COLUMNS) and shows bytes, tokens, tok/s and
elapsed time; --json prints only JSON on stdout; generate without a prompt
says why."""
import fcntl
import json
import os
import pty
import re
import select
import struct
import subprocess
import termios
import time

from conftest import RECUR, recur

TEXT = ("The quick brown fox jumps over the lazy dog.\n"
        "A recurrent model reads one token at a time.\n"
        "Its state has the same size after a thousand lines as after one.\n")


def write_doc(tmp_path, lines=60, name="doc.txt"):
    p = tmp_path / name
    p.write_text("".join(f"Line {i}: " + TEXT for i in range(lines)))
    return p


def redraws(err):
    """The bar's redraws: text between carriage returns, the erase-to-end
    sequence and newlines taken off."""
    out = []
    for part in err.replace("\r\n", "\n").split("\r"):
        for line in part.split("\n"):
            line = line.replace("\033[K", "")
            if "tok/s" in line and not line.startswith("recur: session"):
                out.append(line)
    return out


def run_on_pty(args, cols, timeout=60):
    """Run recur with stderr on a pseudo-terminal `cols` wide; (rc, stdout, stderr)."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, cols, 0, 0))
    e = dict(os.environ)
    e.pop("COLUMNS", None)
    p = subprocess.Popen([RECUR, *map(str, args)], stdout=subprocess.PIPE, stderr=slave,
                         stdin=subprocess.DEVNULL, env=e)
    os.close(slave)
    chunks, end = [], time.time() + timeout
    while time.time() < end:
        r, _, _ = select.select([master], [], [], 0.5)
        if r:
            try:
                b = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not b:
                break
            chunks.append(b)
        elif p.poll() is not None:
            break
    os.close(master)
    out = p.stdout.read().decode()
    p.wait(10)
    return p.returncode, out, b"".join(chunks).decode("utf-8", "replace")


def test_stream_bar_fits_an_80_column_terminal(srv, tmp_path):
    doc = write_doc(tmp_path, lines=120)
    rc, out, err = run_on_pty(["stream", doc, "--segment-bytes", "1K", "--url", srv.base], 80)
    assert rc == 0, err
    lines = redraws(err)
    assert len(lines) >= 3, repr(err)
    for l in lines:
        assert len(l) <= 79, f"{len(l)} columns: {l!r}"
        # bytes sent, tokens, rate and elapsed time are all there
        assert re.search(r"\d+(\.\d)? (B|KiB|MiB)", l), l
        assert re.search(r"\d+ tok(ens)?\b", l) and re.search(r"\d+ tok/s", l), l
        assert re.search(r"\b\d+:\d\d\b", l), l
    assert "100%" in lines[-1]


def test_stream_bar_follows_columns_when_not_a_terminal(srv, tmp_path):
    doc = write_doc(tmp_path, lines=60)
    for cols in (40, 60):
        r = recur("stream", doc, "--segment-bytes", "1K", "--progress", "bar", url=srv.base,
                  env={"COLUMNS": str(cols)})
        assert r.returncode == 0, r.stderr
        lines = redraws(r.stderr)
        assert lines, r.stderr
        for l in lines:
            assert len(l) <= cols - 1, f"COLUMNS={cols}: {len(l)} columns: {l!r}"


def test_stream_json_prints_only_json(srv, tmp_path):
    """--json: stdout is one JSON document (the new session's id is in it,
    not on a line of its own); stderr, not a terminal, gets no progress."""
    doc = write_doc(tmp_path, lines=20)
    r = recur("stream", doc, "--segment-bytes", "1K", "--json", url=srv.base)
    assert r.returncode == 0, r.stderr
    j = json.loads(r.stdout)  # the whole of stdout: nothing else on it
    assert re.fullmatch(r"[0-9a-f]{32}", j["session"]) and j["segments"] >= 2
    assert r.stdout.count("\n") == 1
    assert "tok/s" not in r.stderr and "ETA" not in r.stderr, r.stderr
    # on a terminal the bar goes to stderr, stdout stays pure
    rc, out, err = run_on_pty(["stream", doc, "--segment-bytes", "1K", "--json",
                               "--url", srv.base], 80)
    assert rc == 0, err
    assert json.loads(out)["n_tokens"] == j["n_tokens"]
    assert redraws(err)


def test_generate_without_prompt_says_why(srv):
    for args in ((), ("",)):
        r = recur("generate", *args, url=srv.base)
        assert r.returncode == 2, r
        assert "PROMPT" in r.stderr and "--session" in r.stderr, r.stderr
        first = r.stderr.splitlines()[0]
        assert first.startswith("recur: generate:"), first


# ---- the error messages docs/clients.md shows --------------------------------

DOC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "docs", "clients.md")


def _doc_examples():
    with open(DOC) as f:
        text = " ".join(f.read().split())  # the examples wrap across lines
    refused = re.search(r"`(recur: cannot connect to [^`]*)`", text).group(1)
    http = re.search(r"`(recur: POST /v1/sessions/(\w+)/append: HTTP [^`]*)`", text)
    return refused, http.group(1), http.group(2)


def test_docs_error_examples_are_the_real_messages(srv):
    refused, http, sid = _doc_examples()
    r = recur("generate", "--session", sid, "some text", url=srv.base)
    assert r.returncode == 1
    assert r.stderr.splitlines()[0] == http, (r.stderr, http)
    r = recur("sessions", env={"RECUR_URL": "http://127.0.0.1:" + str(_closed_port())})
    want = refused.replace("http://127.0.0.1:8080", r.stderr.split()[4].rstrip(":"))
    assert r.returncode == 3 and r.stderr.splitlines()[0] == want, (r.stderr, want)


def _closed_port():
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def test_error_line_with_openai_shaped_error_body(tmp_path):
    """The server's error body moves to the OpenAI shape (`type` a category
    such as not_found_error, `code` the fine-grained name): recur keeps
    printing the fine-grained name, so its messages do not change."""
    import http.server
    import threading

    body = json.dumps({"error": {"message": "no session '0123'", "type": "not_found_error",
                                 "param": None, "code": "not_found"}}).encode()

    class H(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(404)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a):
            pass

    httpd = http.server.HTTPServer(("127.0.0.1", 0), H)
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    try:
        r = recur("sessions", url=f"http://127.0.0.1:{httpd.server_port}")
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert r.returncode == 1
    assert r.stderr.splitlines()[0] == \
        "recur: GET /v1/sessions: HTTP 404 not_found: no session '0123'", r.stderr
