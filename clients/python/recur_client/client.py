"""The recurd HTTP client (standard library only: http.client and json).

Each call opens one HTTP/1.1 connection and closes it when the answer has
been read (streams: when they end or are closed), so a Client holds no
sockets between calls and may be shared by threads.

Appends and generates carry an Idempotency-Key (a fresh uuid4 per call) and
are retried with the same key through 503s, lost connections and read
timeouts until the Client's ``retry_deadline``: a retry of a request the
server had already acknowledged gets the stored answer, so nothing is
applied twice (docs/cluster.md).
"""
import collections
import http.client
import json
import numbers
import os
import random
import socket
import ssl
import time
import urllib.parse
import uuid
from typing import (Any, BinaryIO, Callable, Deque, Dict, Iterable, Iterator, List, Optional,
                    Sequence, Tuple, Union)

from . import errors
from .errors import RecurError
from .types import (Completion, CompletionChunk, DoneEvent, GenerateResult, ModelInfo,
                    RetryInfo, ScoreResult, Session, SnapshotInfo, TokenEvent, TokenInfo,
                    combine_scores)

__all__ = ["Client", "GenerateStream", "CompletionStream", "DEFAULT_URL", "split_text",
           "new_idempotency_key"]

DEFAULT_URL = "http://127.0.0.1:8080"
DEFAULT_TIMEOUT = 60.0
DEFAULT_CHUNK = 64 * 1024
# Retries of appends and generates: for this long after the first attempt
# (a failover takes a lease TTL, 5 s by default, plus a restore; a Redis
# restart longer), waiting Retry-After (at most RETRY_AFTER_CAP) or else a
# backoff doubling from RETRY_BACKOFF to RETRY_BACKOFF_MAX, with jitter.
DEFAULT_RETRY_DEADLINE = 120.0
RETRY_AFTER_CAP = 5.0
RETRY_BACKOFF = 0.05
RETRY_BACKOFF_MAX = 2.0
# A text/plain upload from an iterable that cannot be read again is kept in
# memory this far so that a retry can send it again; past it a failure is
# not retried. (A seekable file is read again instead and never kept.)
DEFAULT_RETRY_BUFFER = 64 << 20
# The book helper's piece size: at 3-4 bytes a token, 8 KiB stays under the
# server's default --detail-limit (4096 per-token entries per answer).
DEFAULT_BOOK_CHUNK = 8 * 1024
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


def new_idempotency_key() -> str:
    """A fresh Idempotency-Key (a random uuid4)."""
    return str(uuid.uuid4())


def _retryable(e: BaseException, attempt: int) -> bool:
    """Whether a failed attempt may be sent again with its Idempotency-Key:
    no answer (refused, reset, cut off, timed out), a 503 (a store or a
    replica unavailable, a session moving, a drain), or a proxy's 502/504
    (the replica's connection broke or stalled behind HAProxy). A 409
    session_busy after a retry is our own earlier attempt, still running
    where it arrived."""
    if isinstance(e, (errors.ConnectionError, errors.Timeout)):
        return True
    if isinstance(e, RecurError) and (e.status in (502, 503, 504) or
                                      e.code in ("unavailable", "out_of_memory")):
        return True
    return isinstance(e, errors.SessionBusy) and attempt > 1


class _Retry:
    """The retry state of one logical request (one Idempotency-Key)."""

    def __init__(self, client: "Client", method: str, path: str, key: Optional[str],
                 can_resend: Optional[Callable[[], bool]] = None) -> None:
        self.client = client
        self.method, self.path, self.key = method, path, key
        self.attempt = 1
        d = client.retry_deadline
        self.end = time.monotonic() + d if d else None
        self.backoff = RETRY_BACKOFF
        self.can_resend = can_resend

    def again(self, e: BaseException) -> bool:
        """Attempt ``self.attempt`` failed with e: wait and return True to
        send it again, or False (not retryable, or past the deadline)."""
        if self.end is None or not _retryable(e, self.attempt):
            return False
        if self.can_resend is not None and not self.can_resend():
            return False
        left = self.end - time.monotonic()
        if left <= 0:
            return False
        ra = getattr(e, "retry_after", None)
        if ra is not None and ra > 0:
            delay = min(float(ra), RETRY_AFTER_CAP)
        else:
            delay = self.backoff * (0.5 + random.random() / 2)
            self.backoff = min(self.backoff * 2, RETRY_BACKOFF_MAX)
        delay = min(delay, left)
        if self.client.on_retry is not None:
            self.client.on_retry(RetryInfo(method=self.method, path=self.path,
                                           attempt=self.attempt, error=e, delay=delay,
                                           idempotency_key=self.key))
        time.sleep(delay)
        self.attempt += 1
        return True


class _ResendableChunks:
    """The body of a text/plain upload, sent again on a retry: from
    ``restart()`` (a seekable file read again), else from the chunks kept
    as they were first sent, up to ``limit`` bytes."""

    def __init__(self, chunks: Optional[Iterable[Union[bytes, str]]],
                 restart: Optional[Callable[[], Iterable[Union[bytes, str]]]],
                 limit: int, progress: Optional[Progress], total: Optional[int]) -> None:
        self._src = iter(chunks) if chunks is not None else None
        self._restart = restart
        self._kept: Optional[List[bytes]] = [] if restart is None else None
        self._kept_bytes = 0
        self._limit = limit
        self._progress = progress
        self._total = total
        self._reported = 0
        self.resendable = True

    def _report(self, sent: int) -> None:
        # a retry sends the start again: report only bytes not reported yet
        if self._progress is not None and sent > self._reported:
            self._reported = sent
            self._progress(sent, self._total)

    def body(self) -> Iterator[bytes]:
        """The chunks of one attempt (a generator: http.client sends it
        chunked, one HTTP chunk per item)."""
        sent = 0
        if self._restart is not None:
            src: Iterator[Union[bytes, str]] = iter(self._restart())
        else:
            assert self._src is not None
            for b in list(self._kept or []):
                yield b
                sent += len(b)
                self._report(sent)
            src = self._src
        for c in src:
            b = c.encode("utf-8") if isinstance(c, str) else bytes(c)
            if not b:
                continue  # an empty chunk would end the chunked body
            if self._kept is not None:
                self._kept.append(b)
                self._kept_bytes += len(b)
                if self._kept_bytes > self._limit:
                    self._kept, self.resendable = None, False
            yield b
            sent += len(b)
            self._report(sent)


def split_text(text: Union[str, bytes], max_bytes: int = DEFAULT_BOOK_CHUNK) -> List[str]:
    """Cut text into pieces of at most ``max_bytes`` bytes of UTF-8, never
    inside a character, and where possible where the tokenisation cannot
    change: before a space that follows a non-space and precedes a letter or
    digit (or a non-ASCII character), where a byte-level BPE pre-tokenizer
    splits anyway, so the pieces read one after the other give the tokens
    of the whole text. Such a place is looked for in the second half of
    each piece; without one the cut falls at the budget's last character
    boundary. The pieces joined are the text."""
    if max_bytes < 4:
        raise ValueError("max_bytes must be at least 4 (one UTF-8 character)")
    data = text.encode("utf-8") if isinstance(text, str) else bytes(text)
    data.decode("utf-8")  # bytes must be UTF-8: raises UnicodeDecodeError
    out: List[str] = []
    i, n = 0, len(data)
    while i < n:
        if n - i <= max_bytes:
            out.append(data[i:].decode("utf-8"))
            break
        end = i + max_bytes  # the piece is data[i:cut], cut <= end
        cut = -1
        j = data.rfind(b" ", i + max_bytes // 2, end)
        while j > i:
            nxt = data[j + 1] if j + 1 < n else 0
            prev = data[j - 1]
            if prev not in b" \t\r\n\x0b\x0c" and (
                    nxt >= 0xC0 or chr(nxt).isalnum() and nxt < 0x80):
                cut = j
                break
            j = data.rfind(b" ", i + max_bytes // 2, j)
        if cut < 0:
            cut = end
            while cut > i and (data[cut] & 0xC0) == 0x80:
                cut -= 1  # not inside a character
        out.append(data[i:cut].decode("utf-8"))
        i = cut
    return out


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
    as a GenerateResult.

    When the stream breaks (connection lost, a read timeout, an error event
    saying the server is unavailable) and the Client retries, the request is
    sent again with the same Idempotency-Key and seed. If the generation had
    been committed, the server answers with the stored result as JSON: the
    tokens not yet seen become TokenEvents (their text, which the JSON gives
    only as a whole, comes in the DoneEvent's ``text``). Otherwise the
    generation runs again from the same state and seed: the tokens already
    seen are checked and skipped, the rest stream on. Either way the events
    read are those of one unbroken stream. ``replica``, ``replayed`` and
    ``attempts`` say how the last answer came."""

    def __init__(self, conn: Optional[http.client.HTTPConnection],
                 resp: Union[http.client.HTTPResponse, "_Answer", None],
                 _retry: Optional["_Retry"] = None,
                 _reopen: Optional[Callable[[], Tuple[Any, Any]]] = None) -> None:
        self._conn = None
        self._closed = False
        self._pending: Deque[Union[TokenEvent, DoneEvent]] = collections.deque()
        self._retry = _retry
        self._reopen = _reopen
        self._seen = 0  # tokens of the current answer matched against self.tokens
        self.tokens: List[int] = []
        self.logprobs: List[TokenInfo] = []
        self.done: Optional[DoneEvent] = None
        self._text: List[str] = []
        self.replica: Optional[str] = None
        self.replayed = False
        self._attach(conn, resp)

    @property
    def attempts(self) -> int:
        return self._retry.attempt if self._retry is not None else 1

    @property
    def text(self) -> str:
        """The text streamed so far."""
        return "".join(self._text)

    def _attach(self, conn: Optional[http.client.HTTPConnection], resp: Any) -> None:
        """Read events from a new answer: an event stream, or (conn None)
        the stored JSON result of a committed generation."""
        self._seen = 0
        self.replica = resp.getheader("X-Recurd-Replica") if isinstance(
            resp, http.client.HTTPResponse) else resp.headers.get("X-Recurd-Replica")
        if conn is not None:
            self._conn, self._resp = conn, resp
            self._events = iter(_SSE(resp))
            return
        self.replayed = resp.headers.get("Idempotent-Replayed") == "true"
        j = resp.json()
        try:
            toks = [int(t) for t in j["tokens"]]
            n, end = int(j["n_tokens"]), int(j["position"])
            lps = j.get("logprobs")
            k = len(self.tokens)
            full = j.get("text", "")
            if toks[:k] != self.tokens or not full.startswith(self.text):
                raise errors.ProtocolError(
                    "the stored answer of this generation does not begin with the %d tokens "
                    "streamed before the retry" % k)
            first = end - n
            # the details by position (a truncated list holds the first ones)
            by_pos = {d.get("position"): d for d in lps if isinstance(d, dict)} \
                if isinstance(lps, list) else {}
            for i in range(k, len(toks)):
                d = by_pos.get(first + i)
                info = (TokenInfo.from_json(d) if d is not None and d.get("id") == toks[i]
                        else TokenInfo(id=toks[i], position=first + i))
                self._pending.append(TokenEvent(token=info, text="", position=first + i))
            self._pending.append(DoneEvent(
                finish_reason=j.get("finish_reason", ""), n_tokens=n, position=end,
                seed=j.get("seed"), committed=bool(j.get("committed")),
                text=full[len(self.text):]))
        except (KeyError, TypeError, ValueError) as e:
            raise errors.ProtocolError("unreadable generation result %r (%s)"
                                       % (resp.body[:200], e))

    def _take(self, ev: Union[TokenEvent, DoneEvent]) -> Union[TokenEvent, DoneEvent]:
        if isinstance(ev, TokenEvent):
            self.tokens.append(ev.token.id)
            if ev.token.logprob is not None or ev.token.top_logprobs is not None:
                self.logprobs.append(ev.token)
            self._text.append(ev.text)
        else:
            self.done = ev
            self._text.append(ev.text)
            self._closed = True
            super().close()
        return ev

    def __iter__(self) -> Iterator[Union[TokenEvent, DoneEvent]]:
        return self

    def __next__(self) -> Union[TokenEvent, DoneEvent]:
        while True:
            if self.done is not None or self._closed:
                raise StopIteration  # finished, or closed by the caller or after an error
            if self._pending:
                return self._take(self._pending.popleft())
            try:
                ev = self._read_event()
            except RecurError as e:
                super().close()
                self._recover(e)
                continue
            if ev is not None:
                return self._take(ev)

    def _read_event(self) -> Optional[Union[TokenEvent, DoneEvent]]:
        """The next event of the current answer (None: a token seen before
        the retry, skipped); raises RecurError for a broken stream."""
        if self._conn is None:
            raise errors.ConnectionError("the generation stream ended without a done event")
        data = self._next_data()
        if data is None:
            raise errors.ConnectionError("the generation stream ended without a done event")
        try:
            ev = json.loads(data)
            kind = ev["type"]
        except (ValueError, KeyError, TypeError) as e:
            raise errors.ProtocolError("unreadable stream event %r (%s)" % (data[:200], e))
        if kind == "token":
            tok = TokenInfo.from_json(ev["token"])
            if self._seen < len(self.tokens):  # the run after a retry, again
                if tok.id != self.tokens[self._seen]:
                    raise errors.ProtocolError(
                        "the generation ran again after a retry and gave token %d at index %d, "
                        "not %d as before" % (tok.id, self._seen, self.tokens[self._seen]))
                self._seen += 1
                return None
            self._seen += 1
            return TokenEvent(token=tok, text=ev.get("text", ""), position=ev.get("position"))
        if kind == "done":
            return DoneEvent(finish_reason=ev.get("finish_reason", ""),
                             n_tokens=ev.get("n_tokens", len(self.tokens)),
                             position=ev.get("position"), seed=ev.get("seed"),
                             committed=bool(ev.get("committed")), text=ev.get("text", ""))
        if kind == "error":
            err = ev.get("error") if isinstance(ev.get("error"), dict) else {}
            raise errors.from_error_object(err)
        raise errors.ProtocolError("unknown stream event type %r" % (kind,))

    def _recover(self, e: RecurError) -> None:
        """Send the request again (the Client's retry rule), or raise e."""
        if self._retry is None or self._reopen is None:
            self._closed = True
            raise e
        while True:
            if not self._retry.again(e):
                self._closed = True
                raise e
            try:
                conn, resp = self._reopen()
                self._attach(conn, resp)
                return
            except RecurError as e2:
                e = e2

    def close(self) -> None:
        """Stop reading; closing mid-generation makes the server cancel it
        (the tokens read so far stay in the session when committing)."""
        self._closed = True
        super().close()

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
                              logprobs=list(self.logprobs) if self.logprobs else None, raw={},
                              replica=self.replica, replayed=self.replayed,
                              attempts=self.attempts)


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

    ``retry_deadline`` (seconds; 0 or None: no retries) is how long an
    append or generate is sent again, with its Idempotency-Key, after a 503,
    a lost connection or a read timeout; ``on_retry(RetryInfo)`` is called
    before each wait. ``retry_buffer`` bounds the bytes of an upload from a
    one-pass iterable kept for sending again.
    """

    def __init__(self, url: Optional[str] = None, api_key: Optional[str] = None,
                 timeout: Optional[float] = DEFAULT_TIMEOUT,
                 ssl_context: Optional[ssl.SSLContext] = None,
                 retry_deadline: Optional[float] = DEFAULT_RETRY_DEADLINE,
                 on_retry: Optional[Callable[[RetryInfo], None]] = None,
                 retry_buffer: int = DEFAULT_RETRY_BUFFER) -> None:
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
        if retry_deadline is not None and retry_deadline < 0:
            raise ValueError("retry_deadline must be >= 0")
        self.retry_deadline = retry_deadline
        self.on_retry = on_retry
        self.retry_buffer = retry_buffer

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

    def _retrying(self, method: str, path: str, key: str, attempt: Callable[[], Any],
                  can_resend: Optional[Callable[[], bool]] = None) -> Tuple[Any, int]:
        """Run ``attempt()`` until it returns or fails in a way that is not
        retried (or the deadline passes); returns its value and the number
        of attempts."""
        r = _Retry(self, method, path, key, can_resend)
        while True:
            try:
                return attempt(), r.attempt
            except RecurError as e:
                if not r.again(e):
                    raise

    @staticmethod
    def _answered(res: Any, a: "_Answer", attempts: int) -> Any:
        res.replica = a.headers.get("X-Recurd-Replica")
        res.replayed = a.headers.get("Idempotent-Replayed") == "true"
        res.attempts = attempts
        return res

    def _post_json_retrying(self, path: str, payload: Dict[str, Any],
                            key: Optional[str]) -> Tuple["_Answer", int]:
        key = key or new_idempotency_key()
        body = json.dumps(payload, ensure_ascii=False, allow_nan=False).encode("utf-8")
        headers = {"Content-Type": "application/json", "Idempotency-Key": key}
        return self._retrying("POST", path, key, lambda: self._call("POST", path, body, headers))

    def _open_generate(self, path: str, body: bytes, key: str) -> Tuple[Any, Any]:
        """One attempt of a streamed generate: (conn, response) for an event
        stream, or (None, _Answer) for a JSON answer (a replayed result)."""
        conn, resp = self._open("POST", path, body, {"Content-Type": "application/json",
                                                     "Accept": "text/event-stream",
                                                     "Idempotency-Key": key})
        ctype = resp.getheader("Content-Type", "")
        if resp.status == 200 and ctype.startswith("text/event-stream"):
            return conn, resp
        try:
            data = resp.read()
        except socket.timeout as e:
            raise errors.Timeout("POST %s: the answer stalled (%s)" % (path, e))
        except (OSError, http.client.HTTPException) as e:
            raise errors.ConnectionError("POST %s: the answer broke off: %s" % (path, e))
        finally:
            resp.close()
            conn.close()
        if resp.status != 200:
            raise _error_from(resp.status, resp.headers, data, _retry_after(resp))
        if not ctype.startswith("application/json"):
            raise errors.ProtocolError("expected an event stream, got %r" % ctype,
                                       status=resp.status)
        return None, _Answer(resp.status, resp.headers, data)

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
               top_logprobs: Optional[int] = None, *, expected_position: Optional[int] = None,
               idempotency_key: Optional[str] = None) -> ScoreResult:
        """Read text (str) or token ids into the session and score them.
        Retried through failures with one Idempotency-Key (``idempotency_key``,
        else a fresh one); with ``expected_position`` the server refuses
        (PositionMismatch) a session that is not at that position."""
        payload = _text_or_tokens(data)
        payload.update(_drop_none({"logprobs": logprobs or None, "top_logprobs": top_logprobs,
                                   "expected_position": expected_position}))
        a, n = self._post_json_retrying("/v1/sessions/%s/append" % _sid(session), payload,
                                        idempotency_key)
        return self._answered(ScoreResult.from_json(a.json()), a, n)

    def append_book(self, session: SessionRef, text: Union[str, bytes],
                    chunk_bytes: int = DEFAULT_BOOK_CHUNK, logprobs: bool = False,
                    top_logprobs: Optional[int] = None,
                    progress: Optional[Callable[[int, int, ScoreResult], None]] = None,
                    check_positions: bool = True) -> ScoreResult:
        """Read a whole text into the session as consecutive appends of at
        most ``chunk_bytes`` bytes (split_text: never inside a character,
        at places where the tokens do not change), each with its own
        Idempotency-Key and retried through failovers; with
        ``check_positions`` each also says where it expects the session
        (the previous answer's position), so a piece can never be applied
        out of place. ``progress(sent_bytes, total_bytes, result)`` is
        called after each piece. Returns combine_scores of the pieces'
        results."""
        pieces = split_text(text, chunk_bytes)
        total = sum(len(p.encode("utf-8")) for p in pieces)
        pos = self.get_session(session).position if check_positions else None
        results: List[ScoreResult] = []
        sent = 0
        for p in pieces:
            r = self.append(session, p, logprobs=logprobs, top_logprobs=top_logprobs,
                            expected_position=pos)
            results.append(r)
            if check_positions:
                pos = r.position
            sent += len(p.encode("utf-8"))
            if progress is not None:
                progress(sent, total, r)
        if not results:
            return ScoreResult(position=self.get_session(session).position, n_tokens=0,
                               n_scored=0, nll=None, nll_sum=0.0, ppl=None, buckets=[],
                               tokens=[] if logprobs else None)
        return combine_scores(results)

    def score(self, data: Text, logprobs: bool = False,
              top_logprobs: Optional[int] = None) -> ScoreResult:
        """Score text or token ids from the zero state (no session)."""
        payload = _text_or_tokens(data)
        payload.update(_drop_none({"logprobs": logprobs or None, "top_logprobs": top_logprobs}))
        return ScoreResult.from_json(self._json("POST", "/v1/score", payload))

    def append_stream(self, session: SessionRef, chunks: Iterable[Union[bytes, str]],
                      logprobs: bool = False, top_logprobs: Optional[int] = None,
                      progress: Optional[Progress] = None,
                      total: Optional[int] = None, *, expected_position: Optional[int] = None,
                      idempotency_key: Optional[str] = None) -> ScoreResult:
        """Upload text of any size as a chunked text/plain append: each item
        of ``chunks`` (bytes, or str sent as UTF-8) is sent as it is
        produced; the server tokenises and reads it as it arrives, with the
        same result as one JSON append of the whole text. ``progress(sent,
        total)`` is called after each chunk is written. A failed upload is
        sent again with the same Idempotency-Key (the chunks already taken
        are kept in memory for that, up to the Client's ``retry_buffer``)."""
        return self._append_chunks(session, chunks, None, logprobs, top_logprobs, progress,
                                   total, expected_position, idempotency_key)

    def _append_chunks(self, session: SessionRef, chunks: Optional[Iterable[Union[bytes, str]]],
                       restart: Optional[Callable[[], Iterable[Union[bytes, str]]]],
                       logprobs: bool, top_logprobs: Optional[int],
                       progress: Optional[Progress], total: Optional[int],
                       expected_position: Optional[int],
                       idempotency_key: Optional[str]) -> ScoreResult:
        query = _drop_none({"logprobs": "true" if logprobs else None,
                            "top_logprobs": top_logprobs,
                            "expected_position": expected_position})
        key = idempotency_key or new_idempotency_key()
        path = "/v1/sessions/%s/append" % _sid(session)
        src = _ResendableChunks(chunks, restart, self.retry_buffer if self.retry_deadline else 0,
                                progress, total)
        headers = {"Content-Type": "text/plain; charset=utf-8", "Idempotency-Key": key}
        # a generator body has no length: http.client sends it chunked
        # (Transfer-Encoding: chunked), one HTTP chunk per item
        a, n = self._retrying("POST", path, key,
                              lambda: self._call("POST", path, src.body(), headers, query=query),
                              can_resend=lambda: src.resendable)
        return self._answered(ScoreResult.from_json(a.json()), a, n)

    def append_file(self, session: SessionRef, file: Union[str, "os.PathLike[str]", BinaryIO],
                    chunk_size: int = DEFAULT_CHUNK, logprobs: bool = False,
                    top_logprobs: Optional[int] = None,
                    progress: Optional[Progress] = None, *,
                    expected_position: Optional[int] = None,
                    idempotency_key: Optional[str] = None) -> ScoreResult:
        """Stream a file (a path, or a file object opened for reading) into
        the session, ``chunk_size`` bytes at a time: memory use does not
        depend on the file's size. ``progress(sent_bytes, total_bytes)``
        is called after each chunk (total is None when unknown). A retry
        reads a seekable file again from where it started."""
        if chunk_size <= 0:
            raise ValueError("chunk_size must be positive")
        args = (chunk_size, logprobs, top_logprobs, progress, expected_position,
                idempotency_key)
        if isinstance(file, (str, bytes, os.PathLike)):
            with open(file, "rb") as f:
                return self._append_fileobj(session, f, *args)
        return self._append_fileobj(session, file, *args)

    def _append_fileobj(self, session: SessionRef, f: Any, chunk_size: int, logprobs: bool,
                        top_logprobs: Optional[int], progress: Optional[Progress],
                        expected_position: Optional[int],
                        idempotency_key: Optional[str]) -> ScoreResult:
        total: Optional[int] = None
        here: Optional[int] = None
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

        def restart() -> Iterator[Union[bytes, str]]:
            f.seek(here)
            return chunks()

        if here is not None:
            return self._append_chunks(session, None, restart, logprobs, top_logprobs,
                                       progress, total, expected_position, idempotency_key)
        return self._append_chunks(session, chunks(), None, logprobs, top_logprobs, progress,
                                   total, expected_position, idempotency_key)

    # ---- generation ---------------------------------------------------------------------

    @staticmethod
    def _gen_payload(max_tokens: Optional[int], temperature: Optional[float],
                     top_k: Optional[int], top_p: Optional[float], min_p: Optional[float],
                     seed: Optional[int], stop: Union[str, Sequence[str], None],
                     commit: Optional[bool], logprobs: Optional[bool],
                     top_logprobs: Optional[int], ignore_eos: Optional[bool],
                     expected_position: Optional[int] = None) -> Dict[str, Any]:
        if stop is not None and not isinstance(stop, str):
            stop = list(stop)
        return _drop_none({"max_tokens": max_tokens, "temperature": temperature,
                           "top_k": top_k, "top_p": top_p, "min_p": min_p, "seed": seed,
                           "stop": stop, "commit": commit, "logprobs": logprobs,
                           "top_logprobs": top_logprobs, "ignore_eos": ignore_eos,
                           "expected_position": expected_position})

    def generate(self, session: SessionRef, max_tokens: Optional[int] = None,
                 temperature: Optional[float] = None, top_k: Optional[int] = None,
                 top_p: Optional[float] = None, min_p: Optional[float] = None,
                 seed: Optional[int] = None, stop: Union[str, Sequence[str], None] = None,
                 commit: Optional[bool] = None, logprobs: Optional[bool] = None,
                 top_logprobs: Optional[int] = None,
                 ignore_eos: Optional[bool] = None, *,
                 expected_position: Optional[int] = None,
                 idempotency_key: Optional[str] = None) -> GenerateResult:
        """Generate from the session's state. Options left as None take the
        server's defaults (max_tokens 16, temperature 1.0, commit true...).
        Retried like append (one Idempotency-Key)."""
        p = self._gen_payload(max_tokens, temperature, top_k, top_p, min_p, seed, stop,
                              commit, logprobs, top_logprobs, ignore_eos, expected_position)
        a, n = self._post_json_retrying("/v1/sessions/%s/generate" % _sid(session), p,
                                        idempotency_key)
        return self._answered(GenerateResult.from_json(a.json()), a, n)

    def generate_stream(self, session: SessionRef, max_tokens: Optional[int] = None,
                        temperature: Optional[float] = None, top_k: Optional[int] = None,
                        top_p: Optional[float] = None, min_p: Optional[float] = None,
                        seed: Optional[int] = None,
                        stop: Union[str, Sequence[str], None] = None,
                        commit: Optional[bool] = None, logprobs: Optional[bool] = None,
                        top_logprobs: Optional[int] = None,
                        ignore_eos: Optional[bool] = None, *,
                        expected_position: Optional[int] = None,
                        idempotency_key: Optional[str] = None) -> GenerateStream:
        """Generate as server-sent events: iterate the returned GenerateStream
        for TokenEvent objects and a final DoneEvent (use it as a context
        manager, or close() it, to stop early). With retries on and no
        ``seed``, the client picks the seed, so that a generation run again
        after a failure gives the tokens already streamed."""
        if seed is None and self.retry_deadline:
            seed = random.randrange(1 << 31)
        p = self._gen_payload(max_tokens, temperature, top_k, top_p, min_p, seed, stop,
                              commit, logprobs, top_logprobs, ignore_eos, expected_position)
        p["stream"] = True
        key = idempotency_key or new_idempotency_key()
        path = "/v1/sessions/%s/generate" % _sid(session)
        body = json.dumps(p, ensure_ascii=False, allow_nan=False).encode("utf-8")
        retry = _Retry(self, "POST", path, key)
        while True:
            try:
                conn, resp = self._open_generate(path, body, key)
                break
            except RecurError as e:
                if not retry.again(e):
                    raise
        return GenerateStream(conn, resp, _retry=retry,
                              _reopen=lambda: self._open_generate(path, body, key))

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
