"""The recurd HTTP client (standard library only: http.client and json).

Each call opens one HTTP/1.1 connection and closes it when the answer has
been read (streams: when they end or are closed), so a Client holds no
sockets between calls and may be shared by threads.
"""
import http.client
import json
import numbers
import os
import socket
import ssl
import urllib.parse
from typing import (Any, BinaryIO, Callable, Dict, Iterable, Iterator, List, Optional,
                    Sequence, Tuple, Union)

from . import errors
from .errors import RecurError
from .types import (Completion, CompletionChunk, DoneEvent, GenerateResult, ModelInfo,
                    ScoreResult, Session, SnapshotInfo, TokenEvent, TokenInfo)

__all__ = ["Client", "GenerateStream", "CompletionStream", "DEFAULT_URL"]

DEFAULT_URL = "http://127.0.0.1:8080"
DEFAULT_TIMEOUT = 60.0
DEFAULT_CHUNK = 64 * 1024
USER_AGENT = "recur-client-python/0.1"

SessionRef = Union[str, Session]
Text = Union[str, Sequence[int]]
Progress = Callable[[int, Optional[int]], None]


def _sid(session: SessionRef) -> str:
    sid = session.id if isinstance(session, Session) else session
    if not isinstance(sid, str) or not sid:
        raise TypeError("a session id (str) or Session is needed, not %r" % (session,))
    return urllib.parse.quote(sid, safe="")


def _token_ids(data: Any) -> List[int]:
    if isinstance(data, (str, bytes, bytearray, memoryview)):
        raise TypeError("token ids must be a sequence of int, not %s" % type(data).__name__)
    try:
        items = list(data)
    except TypeError:
        raise TypeError("token ids must be a sequence of int, not %s" % type(data).__name__)
    for t in items:
        if isinstance(t, bool) or not isinstance(t, numbers.Integral):
            raise TypeError("token ids must be integers, not %r" % (t,))
    return [int(t) for t in items]


def _text_or_tokens(data: Text) -> Dict[str, Any]:
    if isinstance(data, str):
        return {"text": data}
    if isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError("give text as str (or stream bytes with append_stream/append_file)")
    return {"tokens": _token_ids(data)}


def _drop_none(d: Dict[str, Any]) -> Dict[str, Any]:
    return {k: v for k, v in d.items() if v is not None}


def _retry_after(resp: http.client.HTTPResponse) -> Optional[float]:
    v = resp.getheader("Retry-After")
    try:
        return float(v) if v is not None else None
    except ValueError:
        return None


class _Answer:
    """A response read to the end: status, headers and body bytes."""

    def __init__(self, status: int, headers: http.client.HTTPMessage, body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    def json(self) -> Any:
        try:
            return json.loads(self.body.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as e:
            raise errors.ProtocolError("the server's answer is not JSON (%s): %r"
                                       % (e, self.body[:200]), status=self.status)


def _error_from(status: int, headers: Any, body: bytes, retry_after: Optional[float]) -> RecurError:
    """The typed exception for an error response (JSON error body or not)."""
    err = None
    try:
        j = json.loads(body.decode("utf-8"))
        if isinstance(j, dict) and isinstance(j.get("error"), dict):
            err = j["error"]
    except (UnicodeDecodeError, ValueError):
        pass
    if err is not None:
        return errors.from_error_object(err, status=status, retry_after=retry_after)
    text = body.decode("utf-8", "replace").strip()[:300] or http.client.responses.get(status, "")
    cls = errors.error_class(status, None)
    return cls(text or "HTTP %d" % status, status=status, code=None, body=body,
               retry_after=retry_after)


class _SSE:
    """Server-sent events from a streaming response: yields each event's data
    (the ``data:`` lines joined with newlines)."""

    def __init__(self, resp: http.client.HTTPResponse) -> None:
        self.resp = resp

    def __iter__(self) -> Iterator[str]:
        data: List[str] = []
        while True:
            line = self.resp.readline()
            if not line:
                if data:
                    raise errors.ProtocolError("the event stream ended inside an event")
                return
            try:
                s = line.decode("utf-8")
            except UnicodeDecodeError as e:
                raise errors.ProtocolError("the event stream is not UTF-8: %s" % e)
            s = s.rstrip("\r\n")
            if not s:
                if data:
                    yield "\n".join(data)
                    data = []
                continue
            if s.startswith(":"):
                continue  # a comment
            name, _, value = s.partition(":")
            if value.startswith(" "):
                value = value[1:]
            if name == "data":
                data.append(value)
            # event:, id:, retry: are not used by recurd and are ignored


class _Stream:
    """Base of the streaming results: owns the connection until closed."""

    def __init__(self, conn: http.client.HTTPConnection, resp: http.client.HTTPResponse) -> None:
        self._conn: Optional[http.client.HTTPConnection] = conn
        self._resp = resp
        self._events = iter(_SSE(resp))

    def _next_data(self) -> Optional[str]:
        if self._conn is None:
            return None
        try:
            return next(self._events)
        except StopIteration:
            return None
        except RecurError:
            self.close()
            raise
        except socket.timeout as e:
            self.close()
            raise errors.Timeout("no event within the timeout: %s" % e)
        except (OSError, http.client.HTTPException) as e:
            self.close()
            raise errors.ConnectionError("the event stream broke: %s" % e)

    def close(self) -> None:
        """Stop reading; closing mid-generation makes the server cancel it
        (the tokens read so far stay in the session when committing)."""
        conn, self._conn = getattr(self, "_conn", None), None
        if conn is not None:
            self._resp.close()
            conn.close()

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:
        self.close()


class GenerateStream(_Stream):
    """Iterate for the events of a streamed generation: TokenEvent for each
    token, then one DoneEvent. An error event from the server is raised as
    the matching RecurError. ``text``, ``tokens`` and ``done`` accumulate as
    events are read; ``result()`` reads to the end and returns the summary
    as a GenerateResult."""

    def __init__(self, conn: http.client.HTTPConnection, resp: http.client.HTTPResponse) -> None:
        super().__init__(conn, resp)
        self.tokens: List[int] = []
        self.logprobs: List[TokenInfo] = []
        self.done: Optional[DoneEvent] = None
        self._text: List[str] = []

    @property
    def text(self) -> str:
        """The text streamed so far."""
        return "".join(self._text)

    def __iter__(self) -> Iterator[Union[TokenEvent, DoneEvent]]:
        return self

    def __next__(self) -> Union[TokenEvent, DoneEvent]:
        if self.done is not None:
            raise StopIteration
        if self._conn is None:
            raise StopIteration  # closed by the caller, or after an error
        data = self._next_data()
        if data is None:
            self.close()
            raise errors.ConnectionError("the generation stream ended without a done event")
        try:
            ev = json.loads(data)
            kind = ev["type"]
        except (ValueError, KeyError, TypeError) as e:
            self.close()
            raise errors.ProtocolError("unreadable stream event %r (%s)" % (data[:200], e))
        if kind == "token":
            tok = TokenInfo.from_json(ev["token"])
            out = TokenEvent(token=tok, text=ev.get("text", ""), position=ev.get("position"))
            self.tokens.append(tok.id)
            if tok.logprob is not None or tok.top_logprobs is not None:
                self.logprobs.append(tok)
            self._text.append(out.text)
            return out
        if kind == "done":
            self.done = DoneEvent(finish_reason=ev.get("finish_reason", ""),
                                  n_tokens=ev.get("n_tokens", len(self.tokens)),
                                  position=ev.get("position"), seed=ev.get("seed"),
                                  committed=bool(ev.get("committed")), text=ev.get("text", ""))
            self._text.append(self.done.text)
            self.close()
            return self.done
        if kind == "error":
            self.close()
            err = ev.get("error") if isinstance(ev.get("error"), dict) else {}
            raise errors.from_error_object(err)
        self.close()
        raise errors.ProtocolError("unknown stream event type %r" % (kind,))

    def result(self) -> GenerateResult:
        """Read the remaining events and return the whole generation."""
        for _ in self:
            pass
        if self.done is None:
            raise errors.ConnectionError("the stream was closed before its done event")
        d = self.done
        return GenerateResult(text=self.text, tokens=list(self.tokens),
                              finish_reason=d.finish_reason, position=d.position,
                              n_tokens=d.n_tokens, seed=d.seed, committed=d.committed,
                              logprobs=list(self.logprobs) if self.logprobs else None, raw={})


class CompletionStream(_Stream):
    """Iterate for the CompletionChunk objects of a streamed /v1/completions
    until the server's ``data: [DONE]``; ``text`` accumulates."""

    def __init__(self, conn: http.client.HTTPConnection, resp: http.client.HTTPResponse) -> None:
        super().__init__(conn, resp)
        self.finished = False
        self.usage: Optional[Dict[str, int]] = None
        self.finish_reason: Optional[str] = None
        self._text: List[str] = []

    @property
    def text(self) -> str:
        return "".join(self._text)

    def __iter__(self) -> Iterator[CompletionChunk]:
        return self

    def __next__(self) -> CompletionChunk:
        if self.finished:
            raise StopIteration
        if self._conn is None:
            raise StopIteration  # closed by the caller, or after an error
        data = self._next_data()
        if data is None:
            self.close()
            raise errors.ConnectionError("the completion stream ended without [DONE]")
        if data == "[DONE]":
            self.finished = True
            self.close()
            raise StopIteration
        try:
            ev = json.loads(data)
        except ValueError as e:
            self.close()
            raise errors.ProtocolError("unreadable stream event %r (%s)" % (data[:200], e))
        if isinstance(ev, dict) and isinstance(ev.get("error"), dict):
            self.close()
            raise errors.from_error_object(ev["error"])
        ch = CompletionChunk.from_json(ev)
        self._text.append(ch.text)
        if ch.finish_reason:
            self.finish_reason = ch.finish_reason
        if ch.usage:
            self.usage = ch.usage
        return ch


class Client:
    """A client for one recurd server.

    ``url`` defaults to $RECURD_URL (or $RECUR_URL), else
    http://127.0.0.1:8080; ``api_key`` to $RECURD_API_KEY (pass ``""`` for
    none). ``timeout`` (seconds, None = wait forever) bounds connecting and
    each wait for the server (one read or write), not a whole request.
    """

    def __init__(self, url: Optional[str] = None, api_key: Optional[str] = None,
                 timeout: Optional[float] = DEFAULT_TIMEOUT,
                 ssl_context: Optional[ssl.SSLContext] = None) -> None:
        if url is None:
            url = os.environ.get("RECURD_URL") or os.environ.get("RECUR_URL") or DEFAULT_URL
        if api_key is None:
            api_key = os.environ.get("RECURD_API_KEY") or None
        u = urllib.parse.urlsplit(url)
        if u.scheme not in ("http", "https") or not u.hostname:
            raise ValueError("url must be http://host[:port] or https://..., not %r" % (url,))
        if u.query or u.fragment:
            raise ValueError("url must not have a query or fragment: %r" % (url,))
        self.url = url.rstrip("/")
        self.api_key = api_key or None
        self.timeout = timeout
        self._https = u.scheme == "https"
        self._host = u.hostname
        self._port = u.port or (443 if self._https else 80)
        self._prefix = u.path.rstrip("/")
        self._ssl = ssl_context

    def __repr__(self) -> str:
        return "Client(%r%s)" % (self.url, ", api_key=..." if self.api_key else "")

    # ---- transport ------------------------------------------------------------------

    def _connection(self) -> http.client.HTTPConnection:
        if self._https:
            return http.client.HTTPSConnection(self._host, self._port, timeout=self.timeout,
                                               context=self._ssl)
        return http.client.HTTPConnection(self._host, self._port, timeout=self.timeout)

    def _open(self, method: str, path: str, body: Any = None,
              headers: Optional[Dict[str, str]] = None,
              query: Optional[Dict[str, Any]] = None
              ) -> Tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
        """Send a request; return the connection and the response (headers
        read, body not). Errors without an answer become ConnectionError or
        Timeout."""
        target = self._prefix + path
        if query:
            target += "?" + urllib.parse.urlencode(query)
        h = {"User-Agent": USER_AGENT, "Accept": "application/json"}
        if self.api_key:
            h["Authorization"] = "Bearer " + self.api_key
        h.update(headers or {})
        conn = self._connection()
        sent_err: Optional[BaseException] = None
        try:
            conn.request(method, target, body=body, headers=h)
        except socket.timeout as e:
            conn.close()
            raise errors.Timeout("%s %s: no answer within %ss (%s)"
                                 % (method, path, self.timeout, e))
        except (OSError, http.client.HTTPException) as e:
            if isinstance(e, (ConnectionRefusedError, socket.gaierror)) or \
                    conn.sock is None:
                conn.close()
                raise errors.ConnectionError("cannot reach %s: %s" % (self.url, e))
            # The server may have answered (an error) and closed before
            # taking the whole body: read that answer if it is there.
            sent_err = e
        except BaseException:
            conn.close()  # an exception from the body's iterable or a callback
            raise
        try:
            resp = conn.getresponse()
        except socket.timeout as e:
            conn.close()
            raise errors.Timeout("%s %s: no answer within %ss (%s)"
                                 % (method, path, self.timeout, e))
        except (OSError, http.client.HTTPException) as e:
            conn.close()
            why = sent_err if sent_err is not None else e
            raise errors.ConnectionError("%s %s: the connection to %s broke: %s"
                                         % (method, path, self.url, why))
        return conn, resp

    def _call(self, method: str, path: str, body: Any = None,
              headers: Optional[Dict[str, str]] = None,
              query: Optional[Dict[str, Any]] = None, ok: Tuple[int, ...] = (200,),
              raise_errors: bool = True) -> _Answer:
        conn, resp = self._open(method, path, body, headers, query)
        try:
            data = resp.read()
        except socket.timeout as e:
            raise errors.Timeout("%s %s: the answer stalled (%s)" % (method, path, e))
        except (OSError, http.client.HTTPException) as e:
            raise errors.ConnectionError("%s %s: the answer broke off: %s" % (method, path, e))
        finally:
            resp.close()
            conn.close()
        if raise_errors and resp.status not in ok:
            raise _error_from(resp.status, resp.headers, data, _retry_after(resp))
        return _Answer(resp.status, resp.headers, data)

    def _json(self, method: str, path: str, payload: Optional[Dict[str, Any]] = None,
              ok: Tuple[int, ...] = (200,)) -> Any:
        body, headers = None, {}
        if payload is not None:
            body = json.dumps(payload, ensure_ascii=False, allow_nan=False).encode("utf-8")
            headers["Content-Type"] = "application/json"
        return self._call(method, path, body, headers, ok=ok).json()

    def _stream(self, path: str, payload: Dict[str, Any]
                ) -> Tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
        body = json.dumps(payload, ensure_ascii=False, allow_nan=False).encode("utf-8")
        conn, resp = self._open("POST", path, body, {"Content-Type": "application/json",
                                                     "Accept": "text/event-stream"})
        if resp.status != 200:
            try:
                data = resp.read()
            except (OSError, http.client.HTTPException):
                data = b""
            finally:
                resp.close()
                conn.close()
            raise _error_from(resp.status, resp.headers, data, _retry_after(resp))
        ctype = resp.getheader("Content-Type", "")
        if not ctype.startswith("text/event-stream"):
            resp.close()
            conn.close()
            raise errors.ProtocolError("expected an event stream, got %r" % ctype,
                                       status=resp.status)
        return conn, resp

    # ---- server -----------------------------------------------------------------------

    def health(self) -> str:
        """The server's status: "ok" when ready, else "loading", "draining"
        or "failed" (a 503 is not an error here). Raises ConnectionError when
        nothing answers."""
        a = self._call("GET", "/health", raise_errors=False)
        if a.status not in (200, 503):
            raise _error_from(a.status, a.headers, a.body, None)
        st = a.json().get("status")
        if not isinstance(st, str):
            raise errors.ProtocolError("/health answered %r" % (a.body[:200],), status=a.status)
        return st

    def wait_ready(self, timeout: float = 30.0, interval: float = 0.1) -> None:
        """Wait until /health says "ok"; raise ServerUnavailable (or the last
        ConnectionError) after ``timeout`` seconds."""
        import time
        end = time.monotonic() + timeout
        last: BaseException = errors.ServerUnavailable("server not ready")
        while True:
            try:
                st = self.health()
                if st == "ok":
                    return
                last = errors.ServerUnavailable("server is %s" % st, status=503,
                                                code="unavailable", type="server_error")
            except (errors.ConnectionError, errors.Timeout) as e:
                last = e
            if time.monotonic() >= end:
                raise last
            time.sleep(interval)

    def metrics(self) -> str:
        """The Prometheus text of /metrics."""
        return self._call("GET", "/metrics").body.decode("utf-8", "replace")

    def models(self) -> List[ModelInfo]:
        return [ModelInfo.from_json(m) for m in self._json("GET", "/v1/models")["data"]]

    def model(self) -> ModelInfo:
        """The model served: arch, dimensions, state and snapshot bytes, fingerprint."""
        return self.models()[0]

    # ---- sessions -----------------------------------------------------------------------

    def create_session(self, fork_of: Optional[SessionRef] = None,
                       snapshot: Optional[str] = None) -> Session:
        """A new session: zero state, or a copy of ``fork_of``, or the named
        server-side snapshot ``snapshot``."""
        if fork_of is not None and snapshot is not None:
            raise ValueError("give fork_of or snapshot, not both")
        payload: Dict[str, Any] = {}
        if fork_of is not None:
            payload["fork_of"] = urllib.parse.unquote(_sid(fork_of))
        if snapshot is not None:
            payload["snapshot"] = snapshot
        return Session.from_json(self._json("POST", "/v1/sessions", payload, ok=(201,)))

    def fork(self, session: SessionRef) -> Session:
        """A new session with a copy of ``session``'s state."""
        return self.create_session(fork_of=session)

    def restore(self, snapshot: bytes) -> Session:
        """A new session from snapshot bytes (from get_state or get_snapshot)."""
        a = self._call("POST", "/v1/sessions", bytes(snapshot),
                       {"Content-Type": "application/octet-stream"}, ok=(201,))
        return Session.from_json(a.json())

    def list_sessions(self) -> List[Session]:
        """The caller's sessions."""
        return [Session.from_json(s) for s in self._json("GET", "/v1/sessions")["data"]]

    def get_session(self, session: SessionRef) -> Session:
        return Session.from_json(self._json("GET", "/v1/sessions/" + _sid(session)))

    def delete_session(self, session: SessionRef) -> None:
        """Delete a session (a request running on it is cancelled)."""
        self._json("DELETE", "/v1/sessions/" + _sid(session))

    # ---- reading and scoring -------------------------------------------------------------

    def append(self, session: SessionRef, data: Text, logprobs: bool = False,
               top_logprobs: Optional[int] = None) -> ScoreResult:
        """Read text (str) or token ids into the session and score them."""
        payload = _text_or_tokens(data)
        payload.update(_drop_none({"logprobs": logprobs or None, "top_logprobs": top_logprobs}))
        return ScoreResult.from_json(
            self._json("POST", "/v1/sessions/%s/append" % _sid(session), payload))

    def score(self, data: Text, logprobs: bool = False,
              top_logprobs: Optional[int] = None) -> ScoreResult:
        """Score text or token ids from the zero state (no session)."""
        payload = _text_or_tokens(data)
        payload.update(_drop_none({"logprobs": logprobs or None, "top_logprobs": top_logprobs}))
        return ScoreResult.from_json(self._json("POST", "/v1/score", payload))

    def append_stream(self, session: SessionRef, chunks: Iterable[Union[bytes, str]],
                      logprobs: bool = False, top_logprobs: Optional[int] = None,
                      progress: Optional[Progress] = None,
                      total: Optional[int] = None) -> ScoreResult:
        """Upload text of any size as a chunked text/plain append: each item
        of ``chunks`` (bytes, or str sent as UTF-8) is sent as it is
        produced; the server tokenises and reads it as it arrives, with the
        same result as one JSON append of the whole text. ``progress(sent,
        total)`` is called after each chunk is written."""
        query = _drop_none({"logprobs": "true" if logprobs else None,
                            "top_logprobs": top_logprobs})

        def body() -> Iterator[bytes]:
            sent = 0
            for c in chunks:
                b = c.encode("utf-8") if isinstance(c, str) else bytes(c)
                if not b:
                    continue  # an empty chunk would end the chunked body
                yield b
                sent += len(b)
                if progress is not None:
                    progress(sent, total)

        # a generator body has no length: http.client sends it chunked
        # (Transfer-Encoding: chunked), one HTTP chunk per item
        a = self._call("POST", "/v1/sessions/%s/append" % _sid(session), body(),
                       {"Content-Type": "text/plain; charset=utf-8"}, query=query)
        return ScoreResult.from_json(a.json())

    def append_file(self, session: SessionRef, file: Union[str, "os.PathLike[str]", BinaryIO],
                    chunk_size: int = DEFAULT_CHUNK, logprobs: bool = False,
                    top_logprobs: Optional[int] = None,
                    progress: Optional[Progress] = None) -> ScoreResult:
        """Stream a file (a path, or a file object opened for reading) into
        the session, ``chunk_size`` bytes at a time: memory use does not
        depend on the file's size. ``progress(sent_bytes, total_bytes)``
        is called after each chunk (total is None when unknown)."""
        if chunk_size <= 0:
            raise ValueError("chunk_size must be positive")
        if isinstance(file, (str, bytes, os.PathLike)):
            with open(file, "rb") as f:
                return self._append_fileobj(session, f, chunk_size, logprobs, top_logprobs,
                                            progress)
        return self._append_fileobj(session, file, chunk_size, logprobs, top_logprobs, progress)

    def _append_fileobj(self, session: SessionRef, f: Any, chunk_size: int, logprobs: bool,
                        top_logprobs: Optional[int], progress: Optional[Progress]) -> ScoreResult:
        total: Optional[int] = None
        try:
            if f.seekable():
                here = f.tell()
                total = os.fstat(f.fileno()).st_size - here
        except (AttributeError, OSError, ValueError):
            total = None

        def chunks() -> Iterator[Union[bytes, str]]:
            while True:
                c = f.read(chunk_size)
                if not c:
                    return
                yield c

        return self.append_stream(session, chunks(), logprobs=logprobs,
                                  top_logprobs=top_logprobs, progress=progress, total=total)

    # ---- generation ---------------------------------------------------------------------

    @staticmethod
    def _gen_payload(max_tokens: Optional[int], temperature: Optional[float],
                     top_k: Optional[int], top_p: Optional[float], min_p: Optional[float],
                     seed: Optional[int], stop: Union[str, Sequence[str], None],
                     commit: Optional[bool], logprobs: Optional[bool],
                     top_logprobs: Optional[int], ignore_eos: Optional[bool]) -> Dict[str, Any]:
        if stop is not None and not isinstance(stop, str):
            stop = list(stop)
        return _drop_none({"max_tokens": max_tokens, "temperature": temperature,
                           "top_k": top_k, "top_p": top_p, "min_p": min_p, "seed": seed,
                           "stop": stop, "commit": commit, "logprobs": logprobs,
                           "top_logprobs": top_logprobs, "ignore_eos": ignore_eos})

    def generate(self, session: SessionRef, max_tokens: Optional[int] = None,
                 temperature: Optional[float] = None, top_k: Optional[int] = None,
                 top_p: Optional[float] = None, min_p: Optional[float] = None,
                 seed: Optional[int] = None, stop: Union[str, Sequence[str], None] = None,
                 commit: Optional[bool] = None, logprobs: Optional[bool] = None,
                 top_logprobs: Optional[int] = None,
                 ignore_eos: Optional[bool] = None) -> GenerateResult:
        """Generate from the session's state. Options left as None take the
        server's defaults (max_tokens 16, temperature 1.0, commit true...)."""
        p = self._gen_payload(max_tokens, temperature, top_k, top_p, min_p, seed, stop,
                              commit, logprobs, top_logprobs, ignore_eos)
        return GenerateResult.from_json(
            self._json("POST", "/v1/sessions/%s/generate" % _sid(session), p))

    def generate_stream(self, session: SessionRef, max_tokens: Optional[int] = None,
                        temperature: Optional[float] = None, top_k: Optional[int] = None,
                        top_p: Optional[float] = None, min_p: Optional[float] = None,
                        seed: Optional[int] = None,
                        stop: Union[str, Sequence[str], None] = None,
                        commit: Optional[bool] = None, logprobs: Optional[bool] = None,
                        top_logprobs: Optional[int] = None,
                        ignore_eos: Optional[bool] = None) -> GenerateStream:
        """Generate as server-sent events: iterate the returned GenerateStream
        for TokenEvent objects and a final DoneEvent (use it as a context
        manager, or close() it, to stop early)."""
        p = self._gen_payload(max_tokens, temperature, top_k, top_p, min_p, seed, stop,
                              commit, logprobs, top_logprobs, ignore_eos)
        p["stream"] = True
        conn, resp = self._stream("/v1/sessions/%s/generate" % _sid(session), p)
        return GenerateStream(conn, resp)

    # ---- snapshots ----------------------------------------------------------------------

    def get_state(self, session: SessionRef) -> bytes:
        """The session's snapshot bytes (proto/SNAPSHOT.md)."""
        return self._call("GET", "/v1/sessions/%s/state" % _sid(session),
                          headers={"Accept": "application/octet-stream"}).body

    def put_state(self, session: SessionRef, snapshot: bytes) -> Session:
        """Replace an existing session's state with snapshot bytes."""
        a = self._call("PUT", "/v1/sessions/%s/state" % _sid(session), bytes(snapshot),
                       {"Content-Type": "application/octet-stream"})
        return Session.from_json(a.json())

    def save_snapshot(self, session: SessionRef, name: str,
                      overwrite: bool = False) -> SnapshotInfo:
        """Save the session as a named server-side snapshot (needs the
        server's --snapshot-dir; NotEnabled otherwise)."""
        payload: Dict[str, Any] = {"name": name}
        if overwrite:
            payload["overwrite"] = True
        return SnapshotInfo.from_json(
            self._json("POST", "/v1/sessions/%s/save" % _sid(session), payload, ok=(201,)))

    def list_snapshots(self) -> List[SnapshotInfo]:
        """The caller's named snapshots."""
        return [SnapshotInfo.from_json(s) for s in self._json("GET", "/v1/snapshots")["data"]]

    def get_snapshot(self, name: str) -> bytes:
        """A named snapshot's bytes."""
        return self._call("GET", "/v1/snapshots/" + urllib.parse.quote(name, safe=""),
                          headers={"Accept": "application/octet-stream"}).body

    def delete_snapshot(self, name: str) -> None:
        self._json("DELETE", "/v1/snapshots/" + urllib.parse.quote(name, safe=""))

    # ---- stateless -----------------------------------------------------------------------

    @staticmethod
    def _cmpl_payload(prompt: Text, kw: Dict[str, Any]) -> Dict[str, Any]:
        p: Any = prompt if isinstance(prompt, str) else _token_ids(prompt)
        payload = {"prompt": p}
        payload.update(_drop_none(kw))
        return payload

    def completions(self, prompt: Text, **kw: Any) -> Completion:
        """OpenAI-compatible /v1/completions (not streamed). Keyword
        arguments are the request's fields (max_tokens, temperature, top_p,
        top_k, min_p, stop, seed, logprobs, echo, model, ...)."""
        if kw.get("stream"):
            raise ValueError("use completions_stream() to stream")
        kw.pop("stream", None)
        return Completion.from_json(self._json("POST", "/v1/completions",
                                               self._cmpl_payload(prompt, kw)))

    def completions_stream(self, prompt: Text, include_usage: bool = False,
                           **kw: Any) -> CompletionStream:
        """Streamed /v1/completions: iterate for CompletionChunk objects."""
        kw.pop("stream", None)
        payload = self._cmpl_payload(prompt, kw)
        payload["stream"] = True
        if include_usage:
            payload["stream_options"] = {"include_usage": True}
        conn, resp = self._stream("/v1/completions", payload)
        return CompletionStream(conn, resp)

    def tokenize(self, text: str) -> List[int]:
        """The token ids of ``text``."""
        return list(self._json("POST", "/v1/tokenize", {"text": text})["tokens"])

    def tokenize_pieces(self, text: str) -> List[TokenInfo]:
        """The tokens of ``text`` with each token's text (and bytes when
        the text is not exact)."""
        j = self._json("POST", "/v1/tokenize", {"text": text, "with_pieces": True})
        return [TokenInfo.from_json(p) for p in j["pieces"]]

    def detokenize(self, tokens: Sequence[int]) -> str:
        """The text of token ids (bytes that are not UTF-8 become U+FFFD)."""
        return self._json("POST", "/v1/detokenize", {"tokens": _token_ids(tokens)})["text"]
