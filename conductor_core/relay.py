"""The hot path: one chat from backend stream to the surface's outbox.

Per token this does one type check, one list append and one ``Outbox.put_token`` (a list
append, or a list append when the previous token is still unsent). No pluggy call, no
allocation beyond the text, no await other than the backend's own. Before the first token
reaches the client a failing backend is replaced by the router's next candidate; after it,
never (the client would see text twice).
"""

from __future__ import annotations

import time
from contextlib import aclosing
from typing import TYPE_CHECKING

import msgspec

from .backends import ChatRequest, Finish
from .errors import (
    BackendError,
    BackendUnavailable,
    ConductorError,
    ModelNotFound,
    Overloaded,
    StreamFailed,
    UnknownModel,
)
from .protocol import Stats
from .routing import Outcome, Router

if TYPE_CHECKING:
    from .avatar import AvatarParser
    from .outbox import Outbox

__all__ = ["Reply", "relay_chat"]

MAX_ATTEMPTS = 3


class Reply:
    """The text relayed so far and how it ended; kept for history even when the chat fails."""

    __slots__ = ("parts", "stats", "first_token_at")

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.stats: Stats | None = None
        self.first_token_at: float | None = None

    @property
    def text(self) -> str:
        return "".join(self.parts)


def _retry_elsewhere(exc: BaseException) -> bool:
    return isinstance(exc, (BackendUnavailable, ModelNotFound)) or (
        isinstance(exc, BackendError) and exc.retryable
    )


class _Stream:
    """One reply's per-token work, shared by every attempt: text to the outbox, avatar tags
    out of the text, the first-token moment, the per-reply cap."""

    __slots__ = ("chat_id", "put_token", "reply", "avatar", "on_avatar", "on_first_token", "max_pieces")

    def __init__(self, chat_id, outbox, reply, avatar, on_avatar, on_first_token, max_pieces) -> None:
        self.chat_id, self.put_token, self.reply = chat_id, outbox.put_token, reply
        self.avatar, self.on_avatar, self.on_first_token = avatar, on_avatar, on_first_token
        self.max_pieces = max_pieces

    async def attempt(self, router: Router, backend, request: ChatRequest) -> Finish | None:
        """Stream one backend's reply; returns its Finish (None if the stream had none)."""
        chat_id, put_token, reply, avatar = self.chat_id, self.put_token, self.reply, self.avatar
        parts, max_pieces = reply.parts, self.max_pieces
        finish: Finish | None = None
        async with router.attempt(backend), aclosing(backend.chat(request)) as stream:
            async for item in stream:
                if type(item) is str:
                    if not item:
                        continue
                    if reply.first_token_at is None:
                        reply.first_token_at = time.perf_counter()
                        if self.on_first_token is not None:
                            self.on_first_token()
                    if avatar is not None and (avatar.held or "[" in item):
                        _emit(avatar.feed(item), chat_id, parts, put_token, self.on_avatar)
                        continue
                    parts.append(item)
                    put_token(chat_id, item)
                    if len(parts) > max_pieces:
                        raise StreamFailed(
                            f"backend {backend.name!r} sent more than {max_pieces} pieces in one reply; "
                            "cut (limits.max_reply_pieces)",
                            backend=backend.name,
                        )
                else:
                    finish = item
        return finish

    def flush_avatar(self) -> None:
        """An unfinished tag at the end of a stream (or at a cut) is text after all."""
        if self.avatar is not None:
            _emit(self.avatar.end(), self.chat_id, self.reply.parts, self.put_token, self.on_avatar)


async def relay_chat(
    *,
    chat_id: str,
    request: ChatRequest,
    router: Router,
    catalog: dict[str, list[str] | None],
    outbox: Outbox,
    reply: Reply,
    started_at: float,
    on_first_token=None,
    conversation_key: str | None = None,
    avatar: AvatarParser | None = None,
    on_avatar=None,
    max_pieces: int = 100_000,
) -> Stats:
    """Stream one reply into ``outbox``; returns the stats or raises a ConductorError.

    With ``avatar``, tags are removed from the text and their commands go to ``on_avatar``; a
    token with no ``[`` while nothing is held costs one ``in`` check more."""
    candidates = router.candidates(request.model, catalog, conversation_key)
    if not candidates:
        known = sorted({m for models in catalog.values() if models for m in models})
        raise UnknownModel(
            f"no configured backend serves model {request.model!r}"
            + (f" (available: {', '.join(known)})" if known else "")
        )
    stream = _Stream(chat_id, outbox, reply, avatar, on_avatar, on_first_token, max_pieces)
    parts = reply.parts
    last_error: BaseException | None = None
    attempts = 0
    for backend, model in candidates[:MAX_ATTEMPTS]:
        attempts += 1
        attempt_request = request if model == request.model else msgspec.structs.replace(request, model=model)
        try:
            finish = await stream.attempt(router, backend, attempt_request)
        except ConductorError as exc:
            if isinstance(exc, Overloaded) and not isinstance(exc, BackendError):
                last_error = exc  # this backend is full: try the next one
                continue
            if isinstance(exc, BackendError) and exc.backend is None:
                exc.backend = backend.name
            router.report(Outcome(backend.name, request.model, exc, first_token_sent=bool(parts)))
            if parts or not _retry_elsewhere(exc):
                stream.flush_avatar()
                raise
            if avatar is not None:
                avatar.discard()
            last_error = exc
            continue
        stream.flush_avatar()
        if finish is None:
            exc = StreamFailed(f"backend {backend.name!r} ended the stream without a final message", backend=backend.name)
            router.report(Outcome(backend.name, request.model, exc, first_token_sent=bool(parts)))
            raise exc
        stats = _stats(backend.name, finish, reply, started_at, attempts, len(parts))
        router.report(
            Outcome(backend.name, request.model, None, stats.ttft_ms / 1000, stats.tokens_per_s, bool(parts))
        )
        reply.stats = stats
        return stats
    assert last_error is not None
    raise last_error


def _emit(result, chat_id: str, parts: list[str], put_token, on_avatar) -> None:
    text, commands = result
    if text:
        parts.append(text)
        put_token(chat_id, text)
    if commands and on_avatar is not None:
        on_avatar(commands)


def _stats(backend: str, finish: Finish, reply: Reply, started_at: float, attempts: int, chunks: int) -> Stats:
    now = time.perf_counter()
    first = reply.first_token_at
    ttft_ms = (first - started_at) * 1000 if first is not None else (now - started_at) * 1000
    tokens = finish.completion_tokens if finish.completion_tokens is not None else chunks
    if finish.generation_s:
        tps = tokens / finish.generation_s
    elif first is not None and now > first and tokens > 1:
        tps = (tokens - 1) / (now - first)
    else:
        tps = 0.0
    return Stats(
        backend=backend,
        model=finish.model,
        ttft_ms=round(ttft_ms, 3),
        tokens=tokens,
        tokens_per_s=round(tps, 2),
        finish_reason=finish.finish_reason,
        load_ms=round(finish.load_s * 1000, 3) if finish.load_s is not None else None,
        attempts=attempts,
    )
