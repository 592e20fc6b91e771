"""The one place where HTTP statuses and httpx exceptions become the kernel's typed errors.

No httpx, socket or anyio exception may leave the plugin, and a server's error body
(``{"error": {"message", "type", "code"}}`` in all its variants) is turned into a message the
user can act on. Secrets never appear here: messages quote the server's body, never our
request headers.
"""

from __future__ import annotations

import email.utils
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import httpx
import msgspec
from conductor_core.errors import (
    BackendBadRequest,
    BackendError,
    BackendRateLimited,
    BackendTimeout,
    BackendUnavailable,
    ModelNotFound,
    StreamFailed,
)
from conductor_core.backends import Timeouts

from .sse import ErrorBody, error_decoder

__all__ = ["error_from_status", "error_message", "map_transport_errors", "retry_after_ms"]

_MAX_QUOTE = 300


def error_message(body: bytes) -> str:
    """The server's own words from an error body, whatever shape it has; never empty."""
    try:
        envelope = error_decoder.decode(body)
    except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError):
        text = body.decode("utf-8", "replace").strip()
        return text[:_MAX_QUOTE] or "(empty body)"
    err = envelope.error
    if isinstance(err, ErrorBody) and err.message:
        return err.message[:_MAX_QUOTE]
    if isinstance(err, str) and err:
        return err[:_MAX_QUOTE]
    for other in (envelope.message, envelope.detail):
        if other:
            return other[:_MAX_QUOTE]
    return body.decode("utf-8", "replace").strip()[:_MAX_QUOTE] or "(empty body)"


def _error_code(body: bytes) -> str:
    try:
        err = error_decoder.decode(body).error
    except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError):
        return ""
    if isinstance(err, ErrorBody):
        return f"{err.code or ''} {err.type or ''}".lower()
    return ""


def retry_after_ms(headers: Mapping[str, str], *, now: float | None = None) -> int | None:
    """``retry-after-ms`` (OpenAI) or ``Retry-After`` as seconds or an HTTP date, in ms."""
    raw_ms = headers.get("retry-after-ms")
    if raw_ms:
        try:
            return max(0, int(float(raw_ms)))
        except ValueError:
            pass
    raw = headers.get("retry-after")
    if not raw:
        return None
    raw = raw.strip()
    try:
        return max(0, int(float(raw) * 1000))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(raw)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    now = time.time() if now is None else now
    return max(0, int((when.timestamp() - now) * 1000))


def error_from_status(
    status: int,
    headers: Mapping[str, str],
    body: bytes,
    *,
    backend: str,
    model: str | None,
    url: str,
) -> BackendError:
    """Map a non-2xx answer to the kernel's error for it."""
    detail = error_message(body)
    where = f"{backend}: {status} from {url}"
    retry = retry_after_ms(headers)
    kw = {"backend": backend, "model": model}
    if status == 429:
        hint = f" (retry after {retry / 1000:g} s)" if retry is not None else ""
        return BackendRateLimited(f"{where}: rate limited{hint}: {detail}", retry_after_ms=retry, **kw)
    if status in (401, 403):
        return BackendError(
            f"{where}: not authorised: {detail} (check api_key / api_key_env in [backends.{backend}])", **kw
        )
    if status == 404:
        code = _error_code(body)
        if "model" in code or "model" in detail.lower():
            return ModelNotFound(f"{where}: model {model!r} not found: {detail}", **kw)
        return BackendUnavailable(
            f"{where}: endpoint not found: {detail} (is base_url right? most servers want .../v1)", **kw
        )
    if status in (408, 504):
        return BackendTimeout(f"{where}: the server timed out: {detail}", **kw)
    if status in (502, 503):
        return BackendUnavailable(f"{where}: unavailable: {detail}", retry_after_ms=retry, **kw)
    if 400 <= status < 500:
        return BackendBadRequest(f"{where}: bad request: {detail}", **kw)
    return BackendError(f"{where}: server error: {detail}", **kw)


@contextmanager
def map_transport_errors(
    backend: str, model: str | None, timeouts: Timeouts, *, started: list[bool] | None = None
) -> Iterator[None]:
    """Translate httpx exceptions, chaining the original. ``started[0]`` true means the stream
    already produced output, so a broken connection is :class:`StreamFailed`."""
    kw = {"backend": backend, "model": model}
    try:
        yield
    except httpx.ConnectTimeout as exc:
        raise BackendTimeout(f"{backend}: no connection within {timeouts.connect:g} s", **kw) from exc
    except httpx.ReadTimeout as exc:
        raise BackendTimeout(
            f"{backend}: no data for {timeouts.between_chunks:g} s (timeouts.between_chunks)", **kw
        ) from exc
    except httpx.WriteTimeout as exc:
        raise BackendTimeout(f"{backend}: request not sent within {timeouts.write:g} s", **kw) from exc
    except httpx.PoolTimeout as exc:
        raise BackendTimeout(
            f"{backend}: every pooled connection stayed busy for {timeouts.pool:g} s", **kw
        ) from exc
    except httpx.ConnectError as exc:
        raise BackendUnavailable(f"{backend}: cannot connect: {exc or type(exc).__name__}", **kw) from exc
    except (httpx.ReadError, httpx.RemoteProtocolError, httpx.WriteError, httpx.CloseError) as exc:
        if started and started[0]:
            raise StreamFailed(f"{backend}: the connection broke mid-stream: {exc or type(exc).__name__}", **kw) from exc
        raise BackendUnavailable(f"{backend}: the server closed the connection: {exc or type(exc).__name__}", **kw) from exc
    except httpx.HTTPError as exc:
        raise BackendError(f"{backend}: HTTP error: {type(exc).__name__}: {exc}", **kw) from exc
