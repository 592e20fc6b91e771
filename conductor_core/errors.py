"""The error taxonomy, and the one place that turns an exception into a wire ``error``.

Every failure a surface can see has a code from :class:`ErrorCode`. Plugins raise the
exception classes below (never httpx, socket or anyio errors: those are translated at the
plugin boundary), and :func:`to_wire` maps any exception to ``(code, message, retryable,
retry_after_ms)``. Unknown exceptions become ``internal`` with no details, because a
traceback string may carry secrets or paths.

::

    ConductorError
    ├── ProtocolViolation            (the peer broke the protocol)
    │   ├── BadMessage               bad_message
    │   ├── TooLarge                 too_large
    │   ├── Unauthorized             unauthorized
    │   └── ProtocolMismatch         protocol_mismatch
    ├── RateLimited                  rate_limited        (retryable, retry_after_ms)
    ├── Overloaded                   overloaded          (retryable)
    │   └── ClientTooSlow            overloaded          (the client stopped reading)
    ├── ShuttingDown                 shutting_down       (retryable)
    ├── Cancelled                    cancelled
    ├── UnknownModel                 unknown_model
    └── BackendError                 backend_error
        ├── BackendUnavailable       backend_unavailable (retryable)
        ├── BackendBadRequest        bad_request
        ├── BackendRateLimited       rate_limited        (retryable, retry_after_ms)
        ├── ModelNotFound            unknown_model
        ├── StreamFailed             backend_error       (failed after the stream started)
        └── BackendTimeout           backend_error       (also a TimeoutError)

    StartupError                     (not sent to surfaces: a component cannot start)
"""

from __future__ import annotations

import enum
import logging

__all__ = [
    "BackendBadRequest",
    "BackendError",
    "BackendRateLimited",
    "BackendTimeout",
    "BackendUnavailable",
    "BadMessage",
    "Cancelled",
    "ClientTooSlow",
    "ConductorError",
    "ErrorCode",
    "ModelNotFound",
    "Overloaded",
    "ProtocolMismatch",
    "ProtocolViolation",
    "RateLimited",
    "ShuttingDown",
    "StartupError",
    "StreamFailed",
    "TooLarge",
    "Unauthorized",
    "UnknownModel",
    "to_wire",
]

log = logging.getLogger("conductor.errors")


class ErrorCode(enum.StrEnum):
    BAD_MESSAGE = "bad_message"
    TOO_LARGE = "too_large"
    UNAUTHORIZED = "unauthorized"
    PROTOCOL_MISMATCH = "protocol_mismatch"
    RATE_LIMITED = "rate_limited"
    UNKNOWN_MODEL = "unknown_model"
    BAD_REQUEST = "bad_request"
    BACKEND_UNAVAILABLE = "backend_unavailable"
    BACKEND_ERROR = "backend_error"
    CANCELLED = "cancelled"
    OVERLOADED = "overloaded"
    SHUTTING_DOWN = "shutting_down"
    INTERNAL = "internal"


class ConductorError(Exception):
    """Base of every error the conductor reports to a surface."""

    code: ErrorCode = ErrorCode.INTERNAL
    retryable: bool = False

    def __init__(self, message: str, *, retry_after_ms: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after_ms = retry_after_ms


class StartupError(Exception):
    """A component cannot start (unsafe socket directory, port in use, another conductor
    running). ``conductor serve`` prints the message as one line and exits 1."""


class ProtocolViolation(ConductorError):
    """The peer sent something the protocol does not allow; the connection may be closed."""

    code = ErrorCode.BAD_MESSAGE
    fatal = False


class BadMessage(ProtocolViolation):
    code = ErrorCode.BAD_MESSAGE


class TooLarge(ProtocolViolation):
    code = ErrorCode.TOO_LARGE
    fatal = True


class Unauthorized(ProtocolViolation):
    code = ErrorCode.UNAUTHORIZED
    fatal = True


class ProtocolMismatch(ProtocolViolation):
    code = ErrorCode.PROTOCOL_MISMATCH
    fatal = True


class RateLimited(ConductorError):
    code = ErrorCode.RATE_LIMITED
    retryable = True


class Overloaded(ConductorError):
    code = ErrorCode.OVERLOADED
    retryable = True


class ClientTooSlow(Overloaded):
    """The surface left more unread output than the bound allows; its connection is closed."""

    retryable = False


class ShuttingDown(ConductorError):
    code = ErrorCode.SHUTTING_DOWN
    retryable = True


class Cancelled(ConductorError):
    code = ErrorCode.CANCELLED


class UnknownModel(ConductorError):
    code = ErrorCode.UNKNOWN_MODEL


class BackendError(ConductorError):
    """A backend failed. ``backend`` names the configured instance once the kernel knows it."""

    code = ErrorCode.BACKEND_ERROR

    def __init__(
        self,
        message: str,
        *,
        backend: str | None = None,
        model: str | None = None,
        retry_after_ms: int | None = None,
    ) -> None:
        super().__init__(message, retry_after_ms=retry_after_ms)
        self.backend = backend
        self.model = model


class BackendUnavailable(BackendError):
    """Connection refused, reset, DNS failure, or a full queue (Ollama's 503)."""

    code = ErrorCode.BACKEND_UNAVAILABLE
    retryable = True


class BackendBadRequest(BackendError):
    code = ErrorCode.BAD_REQUEST


class BackendRateLimited(BackendError):
    code = ErrorCode.RATE_LIMITED
    retryable = True


class ModelNotFound(BackendError):
    code = ErrorCode.UNKNOWN_MODEL


class StreamFailed(BackendError):
    """The stream broke after it started: an error line, a cut connection, no final line."""


class BackendTimeout(BackendError, TimeoutError):
    """No byte arrived within a phase's timeout (connect, between chunks, pool)."""


def to_wire(exc: BaseException) -> tuple[ErrorCode, str, bool, int | None]:
    """Map any exception to ``(code, message, retryable, retry_after_ms)`` for an ``error`` reply."""
    if isinstance(exc, ConductorError):
        return exc.code, exc.message, exc.retryable, exc.retry_after_ms
    log.error("internal error", exc_info=exc)
    return ErrorCode.INTERNAL, "internal error (see the conductor's log)", False, None
