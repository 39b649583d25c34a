"""recur_client: a Python client for recurd (standard library only).

    from recur_client import Client
    c = Client()                      # $RECURD_URL or http://127.0.0.1:8080
    s = c.create_session()
    r = c.append_file(s, "book.txt")  # streamed, any size
    print(r.ppl, [(b.start, b.ppl) for b in r.buckets])
    print(c.generate(s, max_tokens=32, seed=1).text)

See clients/python/README.md.
"""
from .client import (DEFAULT_URL, Client, CompletionStream, GenerateStream, new_idempotency_key,
                     split_text)
from .errors import (BadRequest, Conflict, ConnectionError, InternalServerError,
                     InvalidSnapshot, InvalidSnapshotName, InvalidToken, MethodNotAllowed,
                     NotEnabled, NotFound, OutOfMemory, Overloaded, PayloadTooLarge,
                     PositionMismatch, RequestTimeout,
                     ProtocolError, RecurError, ServerUnavailable, SessionBusy,
                     SnapshotModelMismatch, SnapshotQuotaExceeded, SnapshotWriteFailed, Timeout, TooManyRequests,
                     Unauthorized, UnsupportedMediaType)
from .types import (Bucket, Completion, CompletionChunk, DoneEvent, GenerateResult,
                    ModelInfo, RetryInfo, ScoreResult, Session, SnapshotInfo, TokenEvent, TokenInfo,
                    TopLogprob, combine_scores)

__version__ = "0.1.0"

__all__ = [
    "Client", "GenerateStream", "CompletionStream", "DEFAULT_URL", "split_text",
    "new_idempotency_key", "PositionMismatch", "RetryInfo",
    "RecurError", "BadRequest", "InvalidToken", "InvalidSnapshotName", "Unauthorized",
    "NotFound", "MethodNotAllowed", "Conflict", "SessionBusy", "SnapshotModelMismatch", "SnapshotQuotaExceeded",
    "PayloadTooLarge", "RequestTimeout", "UnsupportedMediaType", "InvalidSnapshot", "Overloaded",
    "TooManyRequests", "ServerUnavailable", "OutOfMemory", "InternalServerError",
    "NotEnabled", "SnapshotWriteFailed", "ConnectionError", "Timeout", "ProtocolError",
    "Bucket", "Completion", "CompletionChunk", "DoneEvent", "GenerateResult", "ModelInfo",
    "ScoreResult", "Session", "SnapshotInfo", "TokenEvent", "TokenInfo", "TopLogprob",
    "combine_scores",
]
