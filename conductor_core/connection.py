"""One surface connection inside the kernel: handshake, dispatch, heartbeat, limits, chats.

The transport gives us a :class:`~conductor_core.channel.Channel`; everything here is the same
for every transport. Three kinds of task run per connection: the reader (this coroutine), one
writer draining the :class:`Outbox`, and one task per chat in flight. Closing the connection
cancels its chats, which closes their backend streams at once.
"""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import anyio

from .avatar import AvatarLink
from .backends import ChatRequest
from .errors import (
    BadMessage,
    Cancelled,
    ClientTooSlow,
    ConductorError,
    ProtocolMismatch,
    ProtocolViolation,
    RateLimited,
    ShuttingDown,
    Unauthorized,
    to_wire,
)
from .outbox import Outbox, OutboxOverflow
from .protocol import (
    PROTOCOL_VERSION,
    SUPPORTED_VERSIONS,
    Cancel,
    Chat,
    ClientPing,
    ClientPong,
    Done,
    Error,
    Hello,
    HistoryReply,
    HistoryRequest,
    ModelsRequest,
    ServerPing,
    ServerPong,
    SpriteRequest,
    State,
    StatusRequest,
    Welcome,
)
from .relay import Reply, relay_chat
from .sessions import Session

if TYPE_CHECKING:
    from .channel import Channel
    from .kernel import Conductor

__all__ = ["Connection", "TokenBucket", "check_token"]

log = logging.getLogger("conductor.connection")
_CLOSED = (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError, ConnectionError)


def check_token(expected: str) -> Callable[[Hello], bool]:
    """An ``authenticate`` callback comparing ``hello.token`` in constant time."""
    want = expected.encode()
    return lambda hello: hello.token is not None and hmac.compare_digest(hello.token.encode(), want)


class TokenBucket:
    __slots__ = ("rate", "burst", "tokens", "stamp")

    def __init__(self, rate: float, burst: int) -> None:
        self.rate, self.burst = rate, burst
        self.tokens = float(burst)
        self.stamp = time.monotonic()

    def take(self) -> int | None:
        """None if allowed, else the milliseconds until a message would be."""
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1:
            self.tokens -= 1
            return None
        return max(1, int((1 - self.tokens) / self.rate * 1000))


class _ChatTask:
    __slots__ = ("scope", "reason")

    def __init__(self) -> None:
        self.scope = anyio.CancelScope()
        self.reason: ConductorError | None = None  # what to tell the client when cancelled


class Connection:
    def __init__(self, conductor: Conductor, channel: Channel, authenticate: Callable[[Hello], bool] | None) -> None:
        self.conductor = conductor
        self.channel = channel
        self.authenticate = authenticate
        limits = conductor.config.limits
        self.limits = limits
        self.outbox = Outbox(limits.max_pending_bytes)
        history = conductor.config.history
        self.session = Session(
            system=conductor.config.system_prompt,
            max_conversations=history.max_conversations,
            max_stored_messages=history.max_stored_messages,
        )
        self.chats: dict[str, _ChatTask] = {}
        self.hello: Hello | None = None
        self.wants_state = False
        self.avatar: AvatarLink | None = None  # set at hello unless [avatar] enabled = false
        self._scope = anyio.CancelScope()
        self._bucket = TokenBucket(limits.messages_per_second, limits.message_burst)
        self._ping_seq = 0
        self._unanswered = 0
        # Events are made only when someone waits: an idle connection's memory is measured
        # (each asyncio.Event carries a deque of ~600 bytes).
        self._closed = False
        self._closed_event: anyio.Event | None = None
        self._writer_finished = False
        self._writer_done: anyio.Event | None = None

    def __repr__(self) -> str:
        return f"<Connection {self.channel.peer} session={self.session.id} chats={len(self.chats)}>"

    async def wait_closed(self) -> None:
        if not self._closed:
            if self._closed_event is None:
                self._closed_event = anyio.Event()
            await self._closed_event.wait()

    # ------------------------------------------------------------------ lifecycle

    async def run(self) -> None:
        try:
            with self._scope:
                async with anyio.create_task_group() as tg:
                    self._tg = tg
                    tg.start_soon(self._writer)
                    if await self._handshake():
                        await self._read_loop()
                    await self._finish()
        finally:
            if self.avatar is not None:
                self.avatar.close()
            self._closed = True
            if self._closed_event is not None:
                self._closed_event.set()
            with anyio.move_on_after(1, shield=True):
                await self.channel.aclose()

    async def _finish(self) -> None:
        """Flush what is queued (bounded), then stop every task of this connection."""
        for chat in list(self.chats.values()):
            chat.scope.cancel()
        self.outbox.close()
        with anyio.move_on_after(1):
            if not self._writer_finished:
                self._writer_done = anyio.Event()
                await self._writer_done.wait()
        self._tg.cancel_scope.cancel()

    def close(self, error: ConductorError | None = None) -> None:
        """Close from outside (shutdown, overflow): tell the client why, then end."""
        if error is not None:
            for chat_id, chat in self.chats.items():
                if chat.reason is None:
                    chat.reason = error
                    self.send_error(error, chat_id)
            if not self.chats:
                self.send_error(error)
        for chat in self.chats.values():
            chat.scope.cancel()
        self.outbox.close()
        self._scope.deadline = min(self._scope.deadline, anyio.current_time() + 1)

    async def _writer(self) -> None:
        take, send = self.outbox.take, self.channel.send
        try:
            while batch := await take():
                await send(batch)
        except _CLOSED:
            self._scope.cancel()  # the client is gone: nothing more can reach it
        except OSError:
            self._scope.cancel()
        finally:
            self._writer_finished = True
            if self._writer_done is not None:
                self._writer_done.set()

    # ------------------------------------------------------------------ input

    async def _handshake(self) -> bool:
        try:
            with anyio.fail_after(self.limits.hello_timeout_s):
                msg = await self.channel.receive()
        except TimeoutError:
            self.send_error(ProtocolMismatch(f"no hello within {self.limits.hello_timeout_s:g} s; closing"))
            return False
        except ProtocolViolation as exc:
            self.send_error(exc)
            return False
        except _CLOSED:
            return False
        if not isinstance(msg, Hello):
            self.send_error(ProtocolMismatch(f"the first message must be hello, got {_tag(msg)}"))
            return False
        if msg.protocol not in SUPPORTED_VERSIONS:
            versions = ", ".join(map(str, SUPPORTED_VERSIONS))
            self.send_error(ProtocolMismatch(f"protocol version {msg.protocol} is not supported (supported: {versions})"))
            return False
        if self.authenticate is not None and not self.authenticate(msg):
            self.send_error(Unauthorized("missing or wrong token in hello"))
            return False
        self.hello = msg
        self.wants_state = "state" in msg.capabilities
        c = self.conductor
        avatar = c.config.avatar
        if avatar.enabled:
            per_minute = avatar.sprite_requests_per_minute
            self.avatar = AvatarLink(
                avatar, self.outbox.put, capable="avatar" in msg.capabilities, session=self.session.id,
                cache=c.avatar_cache, sprite_bucket=TokenBucket(per_minute / 60, per_minute),
            )  # fmt: skip
        snapshot = self.avatar.state if self.avatar is not None and self.avatar.capable else None
        self.outbox.put(
            Welcome(self.session.id, PROTOCOL_VERSION, c.version, c.model_names(), c.config.default_model, snapshot)
        )
        return True

    async def _read_loop(self) -> None:
        limits = self.limits
        receive = self.channel.receive
        wait = limits.heartbeat_interval_s
        while True:
            with anyio.move_on_after(wait) as idle:
                try:
                    msg = await receive()
                except ProtocolViolation as exc:
                    self.send_error(exc)
                    if exc.fatal:
                        return
                    continue
                except _CLOSED:
                    return
            if idle.cancelled_caught:
                if self._unanswered >= limits.heartbeat_misses:
                    log.info("%r: no answer to %d pings; closing", self, self._unanswered)
                    return
                self._ping_seq += 1
                self._unanswered += 1
                self.outbox.put(ServerPing(self._ping_seq))
                wait = limits.heartbeat_timeout_s
                continue
            self._unanswered = 0
            wait = limits.heartbeat_interval_s
            retry_ms = self._bucket.take()
            if retry_ms is not None:
                self.send_error(
                    RateLimited(f"more than {limits.messages_per_second:g} messages/s", retry_after_ms=retry_ms),
                    getattr(msg, "id", None) if isinstance(msg, (Chat, Cancel)) else None,
                )
                continue
            self._dispatch(msg)

    def _dispatch(self, msg) -> None:
        match msg:
            case Chat():
                self._start_chat(msg)
            case Cancel(id=chat_id):
                chat = self.chats.get(chat_id)
                if chat is not None:  # cancelling a finished or unknown chat is a no-op
                    chat.scope.cancel()
            case ClientPing(seq=seq):
                self.outbox.put(ServerPong(seq))
            case ClientPong():
                pass
            case ModelsRequest():
                self._tg.start_soon(self._reply_models)
            case StatusRequest():
                self.outbox.put(self.conductor.status())
            case SpriteRequest():
                self._reply_sprite(msg)
            case HistoryRequest(conversation=name):
                conv = self.session.conversation(name, create=False)
                self.outbox.put(HistoryReply(name, list(conv.messages) if conv else []))
            case Hello():
                self.send_error(BadMessage("hello was already received on this connection"))

    def _reply_sprite(self, msg: SpriteRequest) -> None:
        try:
            if self.avatar is None:
                raise BadMessage("the avatar is disabled on this conductor ([avatar] enabled = false)")
            self.outbox.put(self.avatar.sprite(msg))
        except ConductorError as exc:
            self.send_error(exc)

    async def _reply_models(self) -> None:
        self.outbox.put(await self.conductor.models_reply())

    # ------------------------------------------------------------------ chats

    def _start_chat(self, msg: Chat) -> None:
        try:
            if not msg.id:
                raise BadMessage("chat.id must be a non-empty string")
            if msg.id in self.chats:
                # no id on this error: it must not end the chat that owns the id
                self.send_error(BadMessage(f"chat id {msg.id!r} is already streaming on this connection; use a new id"))
                return
            if len(msg.content) > self.limits.max_content_chars:
                raise BadMessage(f"chat.content is longer than {self.limits.max_content_chars} characters")
            if self.conductor.stopping.is_set():
                raise ShuttingDown("the conductor is shutting down; reconnect in a moment")
            if len(self.chats) >= self.limits.max_chats_per_connection:
                raise RateLimited(
                    f"{self.limits.max_chats_per_connection} chats are already streaming on this connection",
                    retry_after_ms=1000,
                )
            conv = self.session.conversation(msg.conversation)
            self.session.claim(conv, msg.id)
        except ConductorError as exc:
            self.send_error(exc, msg.id or None)
            return
        chat = self.chats[msg.id] = _ChatTask()
        self._tg.start_soon(self._run_chat, msg, conv, chat)

    async def _run_chat(self, msg: Chat, conv, chat: _ChatTask) -> None:
        conductor = self.conductor
        started = time.perf_counter()
        reply = Reply()
        error: BaseException | None = None
        if msg.system is not None:
            conv.system = msg.system or None
        request = ChatRequest(
            messages=conv.request_messages(msg.content, conductor.config.history.max_messages),
            model=msg.model or conductor.config.default_model,
            options=msg.options,
        )
        if self.wants_state:
            self.outbox.put(State(msg.id, "waiting"))
        avatar = self.avatar
        parser = avatar.begin(msg.id) if avatar is not None else None

        def first() -> None:
            if self.wants_state:
                self.outbox.put(State(msg.id, "streaming"))
            if avatar is not None:
                avatar.talking(msg.id)

        conductor.active_chats += 1
        try:
            with chat.scope:
                try:
                    stats = await relay_chat(
                        chat_id=msg.id,
                        request=request,
                        router=conductor.router,
                        catalog=conductor.catalog,
                        outbox=self.outbox,
                        reply=reply,
                        started_at=started,
                        on_first_token=first if self.wants_state or avatar is not None else None,
                        conversation_key=f"{self.session.id}/{conv.name}",
                        avatar=parser,
                        on_avatar=(lambda commands: avatar.commands(msg.id, commands)) if avatar is not None else None,
                        max_pieces=self.limits.max_reply_pieces,
                    )
                    self.outbox.put(Done(msg.id, stats))
                except OutboxOverflow as exc:
                    error = exc
                    self.close(ClientTooSlow(f"{exc}; closing the connection (read faster or reconnect)"))
                except ConductorError as exc:
                    error = exc
                    self.send_error(exc, msg.id)
                except Exception as exc:  # a plugin bug must not take the connection down
                    error = exc
                    self.send_error(exc, msg.id)
            if chat.scope.cancelled_caught and error is None:
                error = chat.reason
                if error is None:  # the client's own cancel: the reply ends with this error
                    error = Cancelled("cancelled by the client")
                    self.send_error(error, msg.id)
        finally:
            conductor.active_chats -= 1
            conductor.chat_finished()
            conv.active = None
            del self.chats[msg.id]
            if reply.parts or error is None:
                conv.record(msg.content, reply.text, interrupted=error is not None)
            if avatar is not None:
                avatar.end(msg.id, failed=error is not None and not isinstance(error, Cancelled))
            if self.wants_state:
                self.outbox.put(State(msg.id, "error" if error else "idle"))

    def send_error(self, exc: BaseException, chat_id: str | None = None) -> None:
        code, message, retryable, retry_after_ms = to_wire(exc)
        self.outbox.put(Error(code, message, retryable, chat_id, retry_after_ms))


def _tag(msg) -> str:
    return type(msg).__struct_config__.tag
