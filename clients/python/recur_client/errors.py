"""Typed errors for recurd's error responses.

The server answers errors with OpenAI's error object
``{"error": {"message", "type", "param", "code"}}`` (docs/server.md,
"Requests, limits and errors"): ``code`` is recurd's name for the error
("session_busy", "invalid_snapshot", ...), ``type`` OpenAI's category
("invalid_request_error", "server_error", ...). Each code maps to one
exception class here; a status without a known code maps by status.
Every exception carries ``status`` (HTTP status, None when no response
came), ``code`` (recurd's error code, None if the body had none), ``type``
(the category), ``param`` (the request field at fault, or None),
``message`` and ``retry_after`` (seconds, from a Retry-After header).
Bodies of servers before the OpenAI shape (``{"type": name, "code":
status}``) are read too.
"""
from typing import Any, Dict, Optional

import builtins


class RecurError(Exception):
    """Base class of every error this client raises for a failed request."""

    def __init__(self, message: str, status: Optional[int] = None,
                 code: Optional[str] = None, body: Any = None,
                 retry_after: Optional[float] = None, type: Optional[str] = None,
                 param: Optional[str] = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code
        self.type = type
        self.param = param
        self.body = body
        self.retry_after = retry_after

    def __str__(self) -> str:
        head = []
        if self.status is not None:
            head.append(str(self.status))
        if self.code:
            head.append(self.code)
        return ("%s: %s" % (" ".join(head), self.message)) if head else self.message


class BadRequest(RecurError):
    """400: malformed or invalid request (``invalid_request``)."""


class InvalidToken(BadRequest):
    """400 ``invalid_token``: a token id outside the vocabulary."""


class InvalidSnapshotName(BadRequest):
    """400 ``invalid_snapshot_name``."""


class Unauthorized(RecurError):
    """401 ``invalid_api_key``: no or wrong API key."""


class NotFound(RecurError):
    """404 ``not_found``: no such route, session or snapshot (or not yours)."""


class MethodNotAllowed(RecurError):
    """405 ``method_not_allowed``."""


class Conflict(RecurError):
    """409: a conflict (``conflict``: a named snapshot exists)."""


class SessionBusy(Conflict):
    """409 ``session_busy``: the session is running another request."""


class PositionMismatch(Conflict):
    """409 ``position_mismatch``: an append or generate sent with
    ``expected_position`` found the session elsewhere; ``position`` is where
    it is (from the error object, or the X-Recurd-Position header)."""

    @property
    def position(self) -> Optional[int]:
        p = self.body.get("position") if isinstance(self.body, dict) else None
        return p if isinstance(p, int) and not isinstance(p, bool) else None


class SnapshotModelMismatch(Conflict):
    """409 ``snapshot_model_mismatch``: a snapshot made by another model."""


class PayloadTooLarge(RecurError):
    """413 ``payload_too_large``."""


class RequestTimeout(RecurError):
    """408 ``request_timeout``: the request body came slower than the
    server's ``--min-body-rate``."""


class UnsupportedMediaType(RecurError):
    """415 ``unsupported_media_type``."""


class InvalidSnapshot(RecurError):
    """422 ``invalid_snapshot``: truncated, padded or damaged snapshot bytes."""


class Overloaded(RecurError):
    """A limit was reached; the request may succeed later (see ``retry_after``).
    Base of TooManyRequests (429) and ServerUnavailable (503)."""


class TooManyRequests(Overloaded):
    """429 ``too_many_sessions``: the API key holds its maximum of sessions."""


class SnapshotQuotaExceeded(TooManyRequests):
    """429 ``snapshot_quota_exceeded``: the API key holds its maximum of
    named snapshots (delete or replace one)."""


class ServerUnavailable(Overloaded):
    """503 ``unavailable``: loading, draining, or a session/memory limit."""


class OutOfMemory(ServerUnavailable):
    """503 ``out_of_memory``: an allocation failed on the server."""


class InternalServerError(RecurError):
    """500 ``internal_error``."""


class NotEnabled(RecurError):
    """501 ``not_enabled``: named snapshots without ``--snapshot-dir``."""


class SnapshotWriteFailed(RecurError):
    """507 ``snapshot_write_failed``: the server could not write the file."""


class ConnectionError(RecurError, builtins.ConnectionError):
    """No usable answer: the server is down, refused or dropped the connection.
    Also an instance of the built-in ConnectionError."""


class Timeout(RecurError, builtins.TimeoutError):
    """The server did not answer within the client's timeout."""


class ProtocolError(RecurError):
    """The server answered something this client cannot read."""


BY_CODE = {
    "invalid_request": BadRequest,
    "invalid_token": InvalidToken,
    "invalid_snapshot_name": InvalidSnapshotName,
    "invalid_api_key": Unauthorized,
    "authentication_error": Unauthorized,  # the name before the OpenAI shape
    "not_found": NotFound,
    "method_not_allowed": MethodNotAllowed,
    "session_busy": SessionBusy,
    "position_mismatch": PositionMismatch,
    "snapshot_model_mismatch": SnapshotModelMismatch,
    "conflict": Conflict,
    "payload_too_large": PayloadTooLarge,
    "request_timeout": RequestTimeout,
    "unsupported_media_type": UnsupportedMediaType,
    "invalid_snapshot": InvalidSnapshot,
    "too_many_sessions": TooManyRequests,
    "snapshot_quota_exceeded": SnapshotQuotaExceeded,
    "internal_error": InternalServerError,
    "not_enabled": NotEnabled,
    "unavailable": ServerUnavailable,
    "out_of_memory": OutOfMemory,
    "snapshot_write_failed": SnapshotWriteFailed,
}

BY_STATUS = {
    400: BadRequest,
    401: Unauthorized,
    404: NotFound,
    405: MethodNotAllowed,
    409: Conflict,
    408: RequestTimeout,
    413: PayloadTooLarge,
    415: UnsupportedMediaType,
    422: InvalidSnapshot,
    429: TooManyRequests,
    500: InternalServerError,
    501: NotEnabled,
    503: ServerUnavailable,
    507: SnapshotWriteFailed,
}


def error_class(status: Optional[int], code: Optional[str]) -> "builtins.type":
    """The exception class for an HTTP status and server error code."""
    if code in BY_CODE:
        return BY_CODE[code]
    if status in BY_STATUS:
        return BY_STATUS[status]
    return RecurError


def from_error_object(err: Dict[str, Any], status: Optional[int] = None,
                      retry_after: Optional[float] = None) -> RecurError:
    """An exception from a parsed ``{"message", "type", "param", "code"}``
    object (an error response's ``error`` member, or a stream's error
    event)."""
    def text(k: str) -> Optional[str]:
        v = err.get(k)
        return v if isinstance(v, str) else None

    etype, code, param = text("type"), text("code"), text("param")
    if isinstance(err.get("code"), int) and not isinstance(err.get("code"), bool):
        # before the OpenAI shape: "code" was the status, "type" the name
        if status is None:
            status = err["code"]
        code, etype = etype, None
    msg = text("message")
    if msg is None:
        msg = "error %s" % (code or status)
    cls = error_class(status, code)
    return cls(msg, status=status, code=code, body=err, retry_after=retry_after,
               type=etype, param=param)
