"""The async client library for surfaces: ``conductor chat``, tests and third-party tools.

The core (:class:`Client`) knows nothing about sockets: it runs over a *client channel*
(``send(msg)``, ``receive() -> msg`` raising ``anyio.EndOfStream`` at close, ``aclose()``), so the
Unix socket, WebSocket and in-process test transports all share it. :func:`connect_unix` is the
socket flavour::

    async with connect_unix() as client:
        async with client.chat("Why is the sky blue?") as reply:
            async for text in reply:
                print(text, end="", flush=True)
        print(reply.stats)

One reader task receives everything, answers the server's heartbeat pings itself, and hands
each reply's messages to the :class:`ChatStream` with that chat id. Replies are buffered in the
client rather than applying backpressure to the reader, so a slow consumer never stops the
client from answering pings (the buffer is bounded by the reply's own size). Leaving a
``ChatStream`` before its ``done`` (``break`` inside ``async with``, an exception, Ctrl-C)
sends ``cancel{id}`` so the backend stops generating.
"""

from __future__ import annotations

import itertools
import os
import random
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import anyio
import anyio.abc
import msgspec

from .framing import FrameDecoder, encode_frame
from .paths import socket_path, token_path
from .protocol import (
    Cancel,
    Chat,
    ClientMessage,
    ClientPong,
    Codec,
    Done,
    Error,
    Hello,
    HistoryMessage,
    HistoryReply,
    HistoryRequest,
    ModelInfo,
    ModelsReply,
    ModelsRequest,
    PROTOCOL_VERSION,
    ServerMessage,
    ServerPing,
    SpriteReply,
    SpriteRequest,
    State,
    Stats,
    StatusReply,
    StatusRequest,
    Token,
    Welcome,
    decode_server,
    encode,
)

__all__ = [
    "Backoff",
    "ChatStream",
    "Client",
    "ClientChannel",
    "ClientError",
    "ConductorNotRunning",
    "UnixClientChannel",
    "connect_unix",
]

_CLOSED = (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError)


class ClientError(Exception):
    """An ``error`` from the conductor, or a client-side failure (``code`` then is one of
    ``not_running``, ``connection_closed``, ``bad_reply``, ``permission_denied``)."""

    def __init__(self, code: str, message: str, retryable: bool = False, retry_after_ms: int | None = None) -> None:
        super().__init__(message)
        self.code = str(code)
        self.message = message
        self.retryable = retryable
        self.retry_after_ms = retry_after_ms

    @classmethod
    def from_wire(cls, err: Error) -> ClientError:
        return cls(str(err.code), err.message, err.retryable, err.retry_after_ms)

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


class ConductorNotRunning(ClientError):
    """Nothing listens at the socket path (no file, or a stale one)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = str(path)
        super().__init__(
            "not_running", f"conductor is not running at {self.path} — start it with `conductor serve`"
        )


class ClientChannel(Protocol):
    """What :class:`Client` needs from a transport: whole messages in, whole messages out."""

    async def send(self, message: ClientMessage) -> None: ...

    async def receive(self) -> ServerMessage: ...

    async def aclose(self) -> None: ...


class UnixClientChannel:
    """A client channel over a connected Unix-socket stream (length-prefixed frames)."""

    def __init__(self, stream: anyio.abc.ByteStream, *, codec: Codec = "msgpack", max_frame_bytes: int = 64 << 20) -> None:
        self.stream = stream
        self.codec: Codec = codec
        self._decoder = FrameDecoder(max_frame_bytes)
        self._pending: deque[bytes] = deque()

    async def send(self, message: ClientMessage) -> None:
        await self.stream.send(encode_frame(encode(message, self.codec)))

    async def send_raw(self, data: bytes) -> None:
        """Write bytes as they are (for tests that speak a broken protocol on purpose)."""
        await self.stream.send(data)

    async def receive(self) -> ServerMessage:
        while not self._pending:
            data = await self.stream.receive(65536)
            self._decoder.receive_data(data)
            self._pending.extend(self._decoder.events_received())
        payload = self._pending.popleft()
        try:
            return decode_server(payload, self.codec)
        except (msgspec.DecodeError, UnicodeDecodeError) as exc:
            raise ClientError("bad_reply", f"undecodable message from the conductor: {exc}") from exc

    async def aclose(self) -> None:
        await self.stream.aclose()


class _Waiter:
    """A one-shot slot for a request/reply exchange (models, status, history)."""

    __slots__ = ("kind", "event", "value", "error")

    def __init__(self, kind: type) -> None:
        self.kind = kind
        self.event = anyio.Event()
        self.value: Any = None
        self.error: ClientError | None = None

    def resolve(self, value: Any = None, error: ClientError | None = None) -> None:
        self.value, self.error = value, error
        self.event.set()


class ChatStream:
    """One reply: an async iterator of text pieces, then :attr:`stats` (the ``done`` stats).

    Use it as ``async with client.chat(...) as reply: async for text in reply: ...`` so that
    leaving early cancels the reply on the server. :meth:`events` yields the raw ``token``,
    ``state`` and final ``done`` messages instead (for ``--json``).
    """

    def __init__(self, client: Client, message: Chat) -> None:
        self.client = client
        self.message = message
        self.id = message.id
        self.stats: Stats | None = None
        self.finished = False
        self._queue: deque[Token | State | Done] = deque()
        self._error: ClientError | None = None
        self._wakeup = anyio.Event()
        self._sent = False

    # ---- called by the client's reader task
    def _push(self, message: Token | State | Done) -> None:
        self._queue.append(message)
        self._wakeup.set()

    def _fail(self, error: ClientError) -> None:
        self._error = error
        self._wakeup.set()

    # ---- the consumer side
    async def start(self) -> ChatStream:
        if not self._sent:
            self._sent = True
            self.client._chats[self.id] = self
            await self.client.send(self.message)
        return self

    async def _next_event(self) -> Token | State | Done | None:
        """The next message of this reply, None after ``done``; raises its error."""
        await self.start()
        while not self._queue:
            if self.finished:
                return None
            if self._error is not None:
                self.finished = True
                self.client._chats.pop(self.id, None)
                raise self._error
            self._wakeup = anyio.Event()
            await self._wakeup.wait()
        message = self._queue.popleft()
        if isinstance(message, Done):
            self.stats = message.stats
            self.finished = True
            self.client._chats.pop(self.id, None)
        return message

    async def events(self) -> AsyncIterator[Token | State | Done]:
        while (message := await self._next_event()) is not None:
            yield message

    def __aiter__(self) -> ChatStream:
        return self

    async def __anext__(self) -> str:
        while True:
            message = await self._next_event()
            if message is None or isinstance(message, Done):
                raise StopAsyncIteration
            if isinstance(message, Token):
                return message.text

    async def text(self) -> str:
        """The whole reply as one string."""
        async with self:
            return "".join([piece async for piece in self])

    async def aclose(self) -> None:
        """Cancel the reply on the server if it has not finished."""
        if self._sent and not self.finished:
            self.finished = True
            self.client._chats.pop(self.id, None)
            with anyio.CancelScope(shield=True), anyio.move_on_after(2):
                try:
                    await self.client.send(Cancel(self.id))
                except (*_CLOSED, ClientError, OSError):
                    pass  # the connection is gone, and the server cancels on disconnect

    async def __aenter__(self) -> ChatStream:
        return await self.start()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


class Client:
    """A connected surface. Enter it (``async with``) to run the handshake and the reader."""

    def __init__(
        self,
        connect: Callable[[], Awaitable[ClientChannel]],
        *,
        token: str | None = None,
        surface: str = "python",
        capabilities: Sequence[str] = (),
    ) -> None:
        self._connect = connect
        self.path: Path | None = None  # the socket path, for messages (set by connect_unix)
        self.hello = Hello(PROTOCOL_VERSION, surface=surface, token=token, capabilities=list(capabilities))
        self.channel: ClientChannel | None = None
        self.welcome: Welcome | None = None
        self.closed = anyio.Event()
        self._chats: dict[str, ChatStream] = {}
        self._waiters: deque[_Waiter] = deque()
        self._ids = itertools.count(1)
        self._send_lock = anyio.Lock()
        self._tg: anyio.abc.TaskGroup | None = None
        self._error: ClientError | None = None  # why the connection ended, once it has

    # ------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> Client:
        self.channel = await self._connect()
        try:
            await self.channel.send(self.hello)
            first = await self.channel.receive()
        except _CLOSED:
            await self.channel.aclose()
            raise ClientError("connection_closed", "the conductor closed the connection during the handshake") from None
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self.channel.aclose()
            raise
        if not isinstance(first, Welcome):
            await self.channel.aclose()
            if isinstance(first, Error):
                raise ClientError.from_wire(first)
            raise ClientError("bad_reply", f"expected welcome, got {type(first).__name__}")
        self.welcome = first
        self._tg = anyio.create_task_group()
        await self._tg.__aenter__()
        self._tg.start_soon(self._reader)
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.aclose()
        assert self._tg is not None
        # The reader is cancelled; the body's own exception propagates as it is (not in a group).
        await self._tg.__aexit__(None, None, None)

    async def aclose(self) -> None:
        if self._tg is not None:
            self._tg.cancel_scope.cancel()
        if self.channel is not None:
            with anyio.CancelScope(shield=True):
                await self.channel.aclose()
        self._end(ClientError("connection_closed", "the client closed the connection"))

    def _end(self, error: ClientError) -> None:
        if self._error is None:
            self._error = error
        for chat in list(self._chats.values()):
            chat._fail(self._error)
        self._chats.clear()
        while self._waiters:
            self._waiters.popleft().resolve(error=self._error)
        self.closed.set()

    async def _reader(self) -> None:
        assert self.channel is not None
        last_error: ClientError | None = None
        try:
            while True:
                message = await self.channel.receive()
                match message:
                    case Token(id=chat_id) | State(id=chat_id) | Done(id=chat_id):
                        chat = self._chats.get(chat_id)
                        if chat is not None:
                            chat._push(message)
                    case Error(id=None):
                        last_error = ClientError.from_wire(message)
                        if self._waiters:
                            self._waiters.popleft().resolve(error=last_error)
                    case Error(id=chat_id):
                        chat = self._chats.pop(chat_id, None)
                        if chat is not None:
                            chat._fail(ClientError.from_wire(message))
                    case ServerPing(seq=seq):
                        await self.send(ClientPong(seq))
                    case ModelsReply() | StatusReply() | HistoryReply() | SpriteReply():
                        self._resolve(message)
                    case _:
                        pass  # pong, or a message this version does not know: ignore
        except _CLOSED:
            self._end(last_error or ClientError("connection_closed", "the conductor closed the connection"))
        except ClientError as exc:
            self._end(exc)
            with anyio.CancelScope(shield=True):
                await self.channel.aclose()

    def _resolve(self, message: Any) -> None:
        for waiter in self._waiters:
            if isinstance(message, waiter.kind):
                self._waiters.remove(waiter)
                waiter.resolve(message)
                return

    # ------------------------------------------------------------------ requests

    async def send(self, message: ClientMessage) -> None:
        if self._error is not None:
            raise self._error
        assert self.channel is not None
        async with self._send_lock:
            try:
                await self.channel.send(message)
            except _CLOSED:
                raise ClientError("connection_closed", "the conductor closed the connection") from None

    def chat(
        self,
        content: str,
        *,
        model: str | None = None,
        conversation: str | None = None,
        system: str | None = None,
        options: dict[str, Any] | None = None,
    ) -> ChatStream:
        """Start a reply (sent on ``async with`` or the first iteration)."""
        chat_id = f"c{next(self._ids)}"
        message = Chat(chat_id, content, model=model, options=options, system=system)
        if conversation is not None:
            message.conversation = conversation
        return ChatStream(self, message)

    async def _request(self, message: ClientMessage, kind: type) -> Any:
        waiter = _Waiter(kind)
        self._waiters.append(waiter)
        try:
            await self.send(message)
        except BaseException:
            if waiter in self._waiters:
                self._waiters.remove(waiter)
            raise
        await waiter.event.wait()
        if waiter.error is not None:
            raise waiter.error
        return waiter.value

    async def models(self) -> list[ModelInfo]:
        reply: ModelsReply = await self._request(ModelsRequest(), ModelsReply)
        return reply.models

    async def status(self) -> StatusReply:
        return await self._request(StatusRequest(), StatusReply)

    async def sprite(self, mood: str, size: str = "small", variant: int = 0) -> SpriteReply:
        """The avatar's sprite for a mood and size (docs/avatar.md); errors raise ClientError."""
        return await self._request(SpriteRequest(mood, size, variant), SpriteReply)

    async def history(self, conversation: str = "default") -> list[HistoryMessage]:
        reply: HistoryReply = await self._request(HistoryRequest(conversation), HistoryReply)
        return reply.messages


@dataclass(frozen=True)
class Backoff:
    """How :func:`connect_unix` retries a connect that finds no conductor (``retry=Backoff()``).

    Waits grow from ``initial_s`` by ``factor`` up to ``max_s``, each with full jitter (a random
    fraction of the step, so a hundred surfaces restarting together do not knock in step), until
    ``total_s`` has passed; then the last error (:class:`ConductorNotRunning`) is raised.
    ``permission_denied`` is never retried: waiting does not fix it.
    """

    initial_s: float = 0.05
    max_s: float = 2.0
    factor: float = 2.0
    total_s: float = 30.0

    def delays(self) -> Iterator[float]:
        step = self.initial_s
        while True:
            yield random.uniform(step / 2, step)
            step = min(self.max_s, step * self.factor)


async def _read_token(path: Path) -> str | None:
    try:
        return (await anyio.Path(path).read_text(encoding="utf-8")).strip() or None
    except OSError:
        return None


def connect_unix(
    path: str | os.PathLike[str] | None = None,
    *,
    token: str | None = None,
    surface: str = "python",
    capabilities: Sequence[str] = (),
    codec: Codec = "msgpack",
    retry: Backoff | None = None,
) -> Client:
    """A :class:`Client` for the conductor's Unix socket; use it with ``async with``.

    ``path`` defaults to ``$CONDUCTOR_SOCKET``, else the default socket path. When ``token`` is
    None and a token file exists next to the socket (the server runs with ``auth = "token"``),
    its token is sent in ``hello``. Raises :class:`ConductorNotRunning` when no one listens,
    unless ``retry`` is given: then the connect is retried with that :class:`Backoff` (a
    conductor restarting, or replacing the stale socket of one that was killed).

    A client is one connection: when it ends (``connection_closed``, ``shutting_down``), replies
    in flight fail and the session's history is gone with it. To reconnect, enter a new
    ``connect_unix(..., retry=Backoff())`` and resend what did not finish::

        while True:
            try:
                async with connect_unix(retry=Backoff()) as client:
                    ...
            except ClientError as exc:
                if exc.code not in ("connection_closed", "shutting_down"):
                    raise
    """
    sock = socket_path(path)

    async def connect() -> ClientChannel:
        delays = retry.delays() if retry is not None else None
        deadline = time.monotonic() + (retry.total_s if retry is not None else 0.0)
        while True:
            try:
                return await connect_once()
            except ConductorNotRunning:
                if delays is None or time.monotonic() >= deadline:
                    raise
            await anyio.sleep(min(next(delays), max(0.0, deadline - time.monotonic())))

    async def connect_once() -> ClientChannel:
        try:
            stream = await anyio.connect_unix(sock)
        except (FileNotFoundError, ConnectionRefusedError):
            raise ConductorNotRunning(sock) from None
        except PermissionError:
            raise ClientError("permission_denied", f"permission denied connecting to {sock}") from None
        except OSError as exc:
            raise ClientError("connection_closed", f"cannot connect to {sock}: {exc.strerror or exc}") from None
        if client.hello.token is None:
            client.hello.token = await _read_token(token_path(sock))
        return UnixClientChannel(stream, codec=codec)

    client = Client(connect, token=token, surface=surface, capabilities=capabilities)
    client.path = sock
    return client
