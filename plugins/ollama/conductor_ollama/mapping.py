"""The one place where Ollama's failures become the conductor's typed errors.

Ollama fails in two forms: before the stream, an HTTP status with ``{"error": "..."}``; inside a
200 stream, a line ``{"error": "..."}``. Transport failures (refused, reset, timeouts) come from
:mod:`conductor_core.httpclient`. Nothing from it leaves this plugin: every exception is translated here, chained with
``from exc``, and carries a hint the user can act on.
"""

from __future__ import annotations

import msgspec

from conductor_core import httpclient
from conductor_core.errors import (
    BackendBadRequest,
    BackendError,
    BackendRateLimited,
    BackendTimeout,
    BackendUnavailable,
    ModelNotFound,
    StreamFailed,
)

__all__ = ["error_from_status", "error_from_transport", "error_message"]


class _ErrorBody(msgspec.Struct):
    error: object = None


_error_decoder = msgspec.json.Decoder(_ErrorBody)


def error_message(body: bytes) -> str:
    """Ollama's ``{"error": "..."}`` text, or the body itself (trimmed) when it is not that."""
    try:
        err = _error_decoder.decode(body).error
    except (msgspec.DecodeError, UnicodeDecodeError):
        err = None
    if isinstance(err, dict):  # the OpenAI form, should a proxy sit in between
        err = err.get("message")
    if err:
        return str(err)
    text = body[:300].decode("utf-8", "replace").strip()
    return text or "(empty body)"


def _retry_after_ms(headers: dict[str, str]) -> int | None:
    value = headers.get("retry-after")
    try:
        return int(float(value) * 1000) if value else None
    except ValueError:
        return None


def error_from_status(
    status: int, body: bytes, headers: dict[str, str], *, url: str, model: str | None, backend: str
) -> BackendError:
    """Map a non-200 answer (before any stream) to a typed error."""
    message = error_message(body)
    ctx = {"backend": backend, "model": model}
    if status == 404:
        return ModelNotFound(f"{message} (Ollama at {url}; hint: `ollama pull {model}`)", **ctx)
    if status == 400:
        return BackendBadRequest(f"Ollama rejected the request: {message}", **ctx)
    if status == 429:
        return BackendRateLimited(f"Ollama is rate limiting: {message}", retry_after_ms=_retry_after_ms(headers), **ctx)
    if status in (502, 503, 504):
        return BackendUnavailable(f"Ollama at {url} is unavailable ({status}): {message}", retry_after_ms=_retry_after_ms(headers), **ctx)
    return BackendError(f"Ollama error {status}: {message}", **ctx)


def error_from_transport(
    exc: httpclient.HTTPError, *, url: str, model: str | None, backend: str, started: bool, between_chunks: float
) -> BackendError:
    """Map a transport exception. ``started``: whether the stream had begun (status 200 seen)."""
    ctx = {"backend": backend, "model": model}
    if isinstance(exc, httpclient.ConnectTimeout):
        return BackendTimeout(f"connecting to Ollama at {url} timed out (timeouts.connect): is `ollama serve` running at {url}?", **ctx)
    if isinstance(exc, httpclient.PoolTimeout):
        return BackendTimeout(f"no free connection to Ollama at {url} in time (timeouts.pool; raise max_connections?)", **ctx)
    if isinstance(exc, httpclient.ReadTimeout):
        return BackendTimeout(
            f"Ollama at {url} sent nothing for {between_chunks:g} s (timeouts.between_chunks; a cold model load can take minutes)",
            **ctx,
        )
    if isinstance(exc, httpclient.WriteTimeout):
        return BackendTimeout(f"sending to Ollama at {url} timed out (timeouts.write)", **ctx)
    if isinstance(exc, httpclient.ConnectError):
        return BackendUnavailable(f"cannot connect to Ollama at {url} ({exc}): is `ollama serve` running at {url}?", **ctx)
    if started:
        return StreamFailed(f"the stream from Ollama at {url} broke: {exc or type(exc).__name__}", **ctx)
    if isinstance(exc, (httpclient.ReadError, httpclient.WriteError, httpclient.RemoteProtocolError)):
        return BackendUnavailable(f"Ollama at {url} dropped the connection ({exc or type(exc).__name__}): is it restarting?", **ctx)
    return BackendError(f"request to Ollama at {url} failed: {type(exc).__name__}: {exc}", **ctx)
