"""A stand-in for a recurd replica behind HAProxy (tests/deploy): answers every
request with which replica it is, so a test can see where HAProxy routed it.

    python3 dummy_replica.py NAME PORT

- every response carries X-Recurd-Replica: NAME (as recurd's do) and a JSON
  body {"replica": NAME, "method": ..., "path": ...}
- GET /health answers 200, or 503 once the file <PORT>.sick exists in the
  working directory (a replica draining, as seen by HAProxy's checks)
- GET .../sse streams 8 server-sent events 50 ms apart
- POST with a chunked body reports the seconds between its first and last
  chunk arriving ("spread"): HAProxy forwarding a streamed upload as it comes
  keeps the client's pauses; buffering it would squeeze them to ~0
"""
import json
import os
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body are two writes
    name = "?"

    def log_message(self, *args):
        pass

    def _answer(self, status, extra=None):
        body = {"replica": self.name, "method": self.command, "path": self.path}
        body.update(extra or {})
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("X-Recurd-Replica", self.name)
        self.end_headers()
        self.wfile.write(data)

    def _read_chunked(self):
        """The chunks' arrival times (s, monotonic) and total bytes."""
        times, total = [], 0
        while True:
            size = int(self.rfile.readline().split(b";")[0], 16)
            if size == 0:
                while self.rfile.readline() not in (b"\r\n", b""):
                    pass
                return times, total
            total += len(self.rfile.read(size))
            self.rfile.readline()
            times.append(time.monotonic())

    def do_GET(self):
        if self.path == "/health":
            sick = os.path.exists(f"{self.server.server_address[1]}.sick")
            return self._answer(503 if sick else 200)
        if self.path.endswith("/sse"):
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Transfer-Encoding", "chunked")
            self.send_header("X-Recurd-Replica", self.name)
            self.end_headers()
            for i in range(8):
                ev = f"data: {i} {time.monotonic()}\n\n".encode()
                self.wfile.write(b"%x\r\n%s\r\n" % (len(ev), ev))
                self.wfile.flush()
                time.sleep(0.05)
            self.wfile.write(b"0\r\n\r\n")
            return None
        return self._answer(200)

    def do_POST(self):
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            times, total = self._read_chunked()
            spread = times[-1] - times[0] if times else 0.0
            return self._answer(200, {"bytes": total, "spread": spread})
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        return self._answer(200)

    do_PUT = do_POST
    do_DELETE = do_POST


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        pass  # HAProxy ends its health checks with a reset: not an error here


def main():
    Handler.name = sys.argv[1]
    srv = Server(("127.0.0.1", int(sys.argv[2])), Handler)
    print("ready", flush=True)
    srv.serve_forever()


if __name__ == "__main__":
    main()
