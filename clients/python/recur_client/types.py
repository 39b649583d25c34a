"""Typed results of recurd's responses (proto/openapi.yaml's schemas).

Every class keeps the parsed JSON object it came from as ``raw``, so a
field added by a newer server is still reachable. Fields the server leaves
out are None.
"""
import math
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Optional


def _opt(d: Dict[str, Any], key: str, default: Any = None) -> Any:
    v = d.get(key)
    return default if v is None else v


@dataclass
class TopLogprob:
    id: int
    text: str
    logprob: float

    @classmethod
    def from_json(cls, d: Dict[str, Any]) -> "TopLogprob":
        return cls(id=d["id"], text=_opt(d, "text", ""), logprob=d["logprob"])


@dataclass
class TokenInfo:
    """One token with its score: ``logprob`` is None for the first token of
    a stream (nothing predicted it). ``bytes`` is set when ``text`` is not
    the token's exact bytes (a partial UTF-8 character)."""
    id: int
    text: str = ""
    position: Optional[int] = None
    logprob: Optional[float] = None
    top_logprobs: Optional[List[TopLogprob]] = None
    bytes: Optional[List[int]] = None

    @classmethod
    def from_json(cls, d: Dict[str, Any]) -> "TokenInfo":
        tops = d.get("top_logprobs")
        return cls(id=d["id"], text=_opt(d, "text", ""), position=d.get("position"),
                   logprob=d.get("logprob"),
                   top_logprobs=[TopLogprob.from_json(t) for t in tops] if tops is not None
                   else None,
                   bytes=d.get("bytes"))


@dataclass
class Bucket:
    """Scores of the predictions made after positions [start, end)."""
    start: int
    end: int
    n: int
    nll: float
    ppl: float

    @classmethod
    def from_json(cls, d: Dict[str, Any]) -> "Bucket":
        return cls(start=d["start"], end=d["end"], n=d["n"], nll=d["nll"], ppl=d["ppl"])


@dataclass
class ScoreResult:
    """What an append or /v1/score read: totals over every token read by the
    request, position buckets, and per-token details when asked for."""
    position: int
    n_tokens: int
    n_scored: int
    nll: Optional[float]
    nll_sum: float
    ppl: Optional[float]
    buckets: List[Bucket]
    tokens: Optional[List[TokenInfo]] = None
    tokens_truncated: bool = False
    raw: Dict[str, Any] = field(default_factory=dict, repr=False, compare=False)
    # how the answer came (not part of the result): the replica that
    # answered (X-Recurd-Replica), whether it was the stored answer of an
    # earlier attempt (Idempotent-Replayed), and how many attempts it took
    replica: Optional[str] = field(default=None, repr=False, compare=False)
    replayed: bool = field(default=False, repr=False, compare=False)
    attempts: int = field(default=1, repr=False, compare=False)

    @classmethod
    def from_json(cls, d: Dict[str, Any]) -> "ScoreResult":
        toks = d.get("tokens")
        return cls(position=d["position"], n_tokens=d["n_tokens"], n_scored=d["n_scored"],
                   nll=d.get("nll"), nll_sum=_opt(d, "nll_sum", 0.0), ppl=d.get("ppl"),
                   buckets=[Bucket.from_json(b) for b in _opt(d, "buckets", [])],
                   tokens=[TokenInfo.from_json(t) for t in toks] if toks is not None else None,
                   tokens_truncated=bool(d.get("tokens_truncated", False)), raw=d)

    @property
    def logprobs(self) -> Optional[List[Optional[float]]]:
        """The per-token log-probabilities (None when details were not asked for)."""
        if self.tokens is None:
            return None
        return [t.logprob for t in self.tokens]


def combine_scores(results: Iterable[ScoreResult]) -> ScoreResult:
    """One ScoreResult for successive appends to one session (for example a
    document sent in pieces): totals are summed, buckets of the same
    [start, end) merged weighted by their counts, token details
    concatenated. ``position`` is the last result's."""
    results = list(results)
    if not results:
        raise ValueError("combine_scores needs at least one result")
    n_tokens = sum(r.n_tokens for r in results)
    n_scored = sum(r.n_scored for r in results)
    nll_sum = math.fsum(r.nll_sum for r in results)
    merged: Dict[tuple, List[float]] = {}
    for r in results:
        for b in r.buckets:
            acc = merged.setdefault((b.start, b.end), [0, 0.0])
            acc[0] += b.n
            acc[1] += b.n * b.nll
    buckets = []
    for (start, end) in sorted(merged):
        n, s = merged[(start, end)]
        nll = s / n if n else float("nan")
        buckets.append(Bucket(start=start, end=end, n=int(n), nll=nll, ppl=math.exp(nll)))
    tokens: Optional[List[TokenInfo]] = None
    if all(r.tokens is not None for r in results):
        tokens = [t for r in results for t in (r.tokens or [])]
    nll = nll_sum / n_scored if n_scored else None
    return ScoreResult(position=results[-1].position, n_tokens=n_tokens, n_scored=n_scored,
                       nll=nll, nll_sum=nll_sum,
                       ppl=math.exp(nll) if nll is not None else None, buckets=buckets,
                       tokens=tokens,
                       tokens_truncated=any(r.tokens_truncated for r in results), raw={})


@dataclass
class Session:
    """A session's facts (GET /v1/sessions/{id})."""
    id: str
    position: int = 0
    state_bytes: Optional[int] = None
    created: Optional[float] = None
    last_used: Optional[float] = None
    expires_in: Optional[float] = None
    busy: bool = False
    spilled: bool = False
    raw: Dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, d: Dict[str, Any]) -> "Session":
        return cls(id=d["id"], position=_opt(d, "position", 0), state_bytes=d.get("state_bytes"),
                   created=d.get("created"), last_used=d.get("last_used"),
                   expires_in=d.get("expires_in"), busy=bool(d.get("busy", False)),
                   spilled=bool(d.get("spilled", False)), raw=d)

    def __str__(self) -> str:
        return self.id


@dataclass
class ModelInfo:
    """The model served (GET /v1/models)."""
    id: str
    arch: Optional[str] = None
    d_model: Optional[int] = None
    n_layer: Optional[int] = None
    vocab_size: Optional[int] = None
    d_state: Optional[int] = None
    d_inner: Optional[int] = None
    n_params: Optional[int] = None
    state_bytes: Optional[int] = None
    snapshot_bytes: Optional[int] = None
    fingerprint: Optional[str] = None
    tokenizer: Optional[str] = None
    created: Optional[int] = None
    raw: Dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, d: Dict[str, Any]) -> "ModelInfo":
        keys = ("arch", "d_model", "n_layer", "vocab_size", "d_state", "d_inner", "n_params",
                "state_bytes", "snapshot_bytes", "fingerprint", "tokenizer", "created")
        return cls(id=d["id"], raw=d, **{k: d.get(k) for k in keys})


@dataclass
class GenerateResult:
    """A finished generation: ``tokens`` are the sampled ids, ``text`` their
    text up to (not including) a stop sequence. ``logprobs`` only when
    asked for."""
    text: str
    tokens: List[int]
    finish_reason: str
    position: int
    n_tokens: int
    seed: int
    committed: bool
    logprobs: Optional[List[TokenInfo]] = None
    raw: Dict[str, Any] = field(default_factory=dict, repr=False, compare=False)
    replica: Optional[str] = field(default=None, repr=False, compare=False)
    replayed: bool = field(default=False, repr=False, compare=False)
    attempts: int = field(default=1, repr=False, compare=False)

    @classmethod
    def from_json(cls, d: Dict[str, Any]) -> "GenerateResult":
        lps = d.get("logprobs")
        return cls(text=_opt(d, "text", ""), tokens=list(_opt(d, "tokens", [])),
                   finish_reason=d.get("finish_reason", ""), position=d["position"],
                   n_tokens=d["n_tokens"], seed=d["seed"], committed=bool(d["committed"]),
                   logprobs=[TokenInfo.from_json(t) for t in lps] if lps is not None else None,
                   raw=d)


@dataclass
class TokenEvent:
    """A streamed token: ``text`` is the text it released (may be empty while
    a UTF-8 character or a possible stop sequence is incomplete)."""
    token: TokenInfo
    text: str
    position: int
    type: str = "token"

    @property
    def id(self) -> int:
        return self.token.id


@dataclass
class DoneEvent:
    """The last event of a generation stream. ``text`` is any text held back
    until the end (usually empty)."""
    finish_reason: str
    n_tokens: int
    position: int
    seed: int
    committed: bool
    text: str = ""
    type: str = "done"


@dataclass
class SnapshotInfo:
    """A named server-side snapshot: ``position`` after a save, ``created``
    (unix seconds) in a listing."""
    name: str
    bytes: int
    position: Optional[int] = None
    created: Optional[int] = None

    @classmethod
    def from_json(cls, d: Dict[str, Any]) -> "SnapshotInfo":
        return cls(name=d["name"], bytes=d["bytes"], position=d.get("position"),
                   created=d.get("created"))


@dataclass
class Completion:
    """A /v1/completions answer (OpenAI's text_completion object): the first
    choice's text, finish reason and logprobs, the usage, and ``raw``."""
    id: str
    text: str
    finish_reason: Optional[str]
    usage: Optional[Dict[str, int]]
    logprobs: Optional[Dict[str, Any]]
    model: Optional[str] = None
    raw: Dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, d: Dict[str, Any]) -> "Completion":
        ch = (d.get("choices") or [{}])[0]
        return cls(id=d.get("id", ""), text=_opt(ch, "text", ""),
                   finish_reason=ch.get("finish_reason"), usage=d.get("usage"),
                   logprobs=ch.get("logprobs"), model=d.get("model"), raw=d)


@dataclass
class CompletionChunk:
    """One streamed /v1/completions chunk: the text delta of the first
    choice, its finish reason (on the last text chunk) and, with
    ``include_usage``, the usage (on a chunk without choices)."""
    text: str
    finish_reason: Optional[str]
    usage: Optional[Dict[str, int]]
    raw: Dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, d: Dict[str, Any]) -> "CompletionChunk":
        chs = d.get("choices") or []
        ch = chs[0] if chs else {}
        return cls(text=_opt(ch, "text", ""), finish_reason=ch.get("finish_reason"),
                   usage=d.get("usage"), raw=d)


@dataclass
class RetryInfo:
    """One retry, as passed to the Client's ``on_retry`` callback: the
    request, the attempt that failed (1 = the first), why, the seconds the
    client waits before the next attempt and the request's Idempotency-Key."""
    method: str
    path: str
    attempt: int
    error: Exception
    delay: float
    idempotency_key: Optional[str] = None
