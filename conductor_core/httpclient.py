"""A lean HTTP/1.1 client for backends: pooled keep-alive connections, streamed bodies,
per-phase timeouts (connect, pool, write, between chunks; never a total deadline).

It exists for the hot path (see :mod:`conductor_core.http1` for why not httpx). Closing a
response before its body ended closes the connection, which is how a backend tells the server
to stop generating. The exception names follow httpx's so mapping code reads the same.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Callable
from urllib.parse import urlsplit

import anyio
import anyio.abc

from .backends import Timeouts
from .http1 import HTTPProtocolError, ResponseHead, ResponseParser, encode_request

__all__ = [
    "Abandoned",
    "ConnectError",
    "ConnectTimeout",
    "HTTPError",
    "PoolTimeout",
    "ReadError",
    "ReadTimeout",
    "RemoteProtocolError",
    "Response",
    "StreamingClient",
    "WriteError",
    "WriteTimeout",
]

READ_SIZE = 65536


class HTTPError(Exception):
    pass


class ConnectError(HTTPError):
    pass


class ConnectTimeout(HTTPError):
    pass


class PoolTimeout(HTTPError):
    pass


class ReadTimeout(HTTPError):
    pass


class WriteTimeout(HTTPError):
    pass


class ReadError(HTTPError):
    """The connection broke while reading."""


class WriteError(HTTPError):
    pass


class RemoteProtocolError(HTTPError):
    pass


_BROKEN = (anyio.BrokenResourceError, anyio.ClosedResourceError, anyio.EndOfStream, OSError)


class Response:
    """A response whose head has arrived. Iterate it for body pieces; always ``aclose()`` it."""

    def __init__(self, client: StreamingClient, stream: anyio.abc.ByteStream, parser: ResponseParser, pending: list[bytes]) -> None:
        self._client = client
        self._stream = stream
        self._parser = parser
        self._pending = pending
        self._closed = False
        head = parser.head
        assert head is not None
        self.head: ResponseHead = head
        self.status_code = head.status
        self.headers = head.headers

    async def aiter_raw(self) -> AsyncIterator[bytes]:
        """Body pieces as they arrive; each wait is bounded by ``timeouts.between_chunks``."""
        for piece in self._pending:
            if piece:
                yield piece
        self._pending = []
        parser, receive, timeout = self._parser, self._stream.receive, self._client.timeouts.between_chunks
        current_time, CancelScope = anyio.current_time, anyio.CancelScope
        while not parser.complete:
            try:
                # a bare scope with a deadline: ~25 % cheaper than fail_after, and this is per read
                with CancelScope(deadline=current_time() + timeout) as scope:
                    data = await receive(READ_SIZE)
                if scope.cancelled_caught:
                    raise ReadTimeout(f"no data for {timeout:g} s")
            except anyio.EndOfStream:
                try:
                    parser.eof()
                except HTTPProtocolError as exc:
                    raise ReadError(str(exc)) from None
                return
            except _BROKEN as exc:
                raise ReadError(f"connection lost: {exc or type(exc).__name__}") from exc
            try:
                pieces = parser.feed(data)
            except HTTPProtocolError as exc:
                raise RemoteProtocolError(str(exc)) from exc
            for piece in pieces:
                if piece:
                    yield piece

    @property
    def complete(self) -> bool:
        """The body has ended by its framing (nothing more to read)."""
        return self._parser.complete and not self._pending

    async def aread(self, limit: int = 16 << 20) -> bytes:
        body = bytearray()
        async for piece in self.aiter_raw():
            body += piece
            if len(body) > limit:
                raise RemoteProtocolError(f"response body larger than {limit} bytes")
        return bytes(body)

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        reusable = self._parser.complete and self.head.keep_alive and not self._pending
        await self._client._release(self._stream, reusable)


class Abandoned:
    """A request whose caller left before the response head: :meth:`wait_head` waits for the
    head (bounded by ``between_chunks``), then closes the connection."""

    def __init__(self, stream: anyio.abc.ByteStream, parser: ResponseParser, timeout: float) -> None:
        self.stream, self.parser, self.timeout = stream, parser, timeout

    async def wait_head(self) -> int | None:
        """The status code once the head arrived, None if it never did."""
        try:
            with anyio.move_on_after(self.timeout):
                while self.parser.head is None:
                    self.parser.feed(await self.stream.receive(READ_SIZE))
        except (*_BROKEN, HTTPProtocolError):
            pass
        finally:
            await _close(self.stream)
        return self.parser.head.status if self.parser.head else None


class StreamingClient:
    """One pool per backend. ``base_url`` is ``http://host:port`` or ``https://...``."""

    def __init__(
        self,
        base_url: str,
        *,
        timeouts: Timeouts = Timeouts(),
        max_connections: int = 100,
        headers: dict[str, str] | None = None,
    ) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"expected an http:// or https:// URL, got {base_url!r}")
        self.tls = parts.scheme == "https"
        self.host = parts.hostname
        self.port = parts.port or (443 if self.tls else 80)
        self.prefix = parts.path.rstrip("/")
        self.host_header = parts.netloc.rsplit("@", 1)[-1]
        self.timeouts = timeouts
        self.headers = {"Accept-Encoding": "identity", "User-Agent": "conductor", **(headers or {})}
        self._idle: list[anyio.abc.ByteStream] = []
        self._slots = anyio.Semaphore(max_connections)
        self._ssl: ssl.SSLContext | None = None
        self.connections_opened = 0

    def __repr__(self) -> str:
        return f"<StreamingClient {self.host}:{self.port} idle={len(self._idle)} opened={self.connections_opened}>"

    async def request(
        self,
        method: str,
        path: str,
        body: bytes = b"",
        headers: dict[str, str] | None = None,
        *,
        on_abandon: Callable[[Abandoned], None] | None = None,
    ) -> Response:
        """Send a request and return once the response head arrived (the body streams after).

        ``on_abandon``: if the caller is cancelled after the request was sent but before the
        head arrived, the connection is handed to this callback instead of being closed (the
        Ollama backend uses it so that a cancel during a model load does not abort the load).
        """
        t = self.timeouts
        slots = self._slots
        if slots.value:  # the common case: a free slot, taken without a checkpoint or a timer
            slots.acquire_nowait()
        else:
            try:
                with anyio.fail_after(t.pool):
                    await slots.acquire()
            except TimeoutError:
                raise PoolTimeout(f"no free connection within {t.pool:g} s") from None
        try:
            data = encode_request(method, self.prefix + path, self.host_header, {**self.headers, **(headers or {})}, body)
            while self._idle:  # a pooled connection the server may have closed: retry on a fresh one
                stream = self._idle.pop()
                try:
                    return await self._exchange(stream, data, method, on_abandon)
                except (ReadError, WriteError):
                    await _close(stream)
            return await self._exchange(await self._connect(), data, method, on_abandon)
        except BaseException:
            self._slots.release()
            raise

    async def _exchange(self, stream: anyio.abc.ByteStream, data: bytes, method: str, on_abandon=None) -> Response:
        t = self.timeouts
        sent = False
        parser = ResponseParser(head_request=method == "HEAD")
        try:
            # One cancel scope for both phases (a scope costs ~10 µs; this runs per request):
            # its deadline is the write timeout, then the first-byte (between-chunks) timeout.
            with anyio.CancelScope(deadline=anyio.current_time() + t.write) as scope:
                try:
                    await stream.send(data)
                except _BROKEN as exc:
                    raise WriteError(f"connection lost while sending: {exc or type(exc).__name__}") from exc
                sent = True
                scope.deadline = anyio.current_time() + t.between_chunks
                pending: list[bytes] = []
                while parser.head is None:
                    try:
                        chunk = await stream.receive(READ_SIZE)
                    except _BROKEN as exc:
                        raise ReadError(f"connection closed before a response: {exc or type(exc).__name__}") from exc
                    try:
                        pending = parser.feed(chunk)
                    except HTTPProtocolError as exc:
                        raise RemoteProtocolError(str(exc)) from exc
            if scope.cancelled_caught:
                if not sent:
                    raise WriteTimeout(f"sending the request took over {t.write:g} s")
                raise ReadTimeout(f"no response for {t.between_chunks:g} s")
            return Response(self, stream, parser, pending)
        except anyio.get_cancelled_exc_class():
            if sent and on_abandon is not None and parser.head is None:
                on_abandon(Abandoned(stream, parser, t.between_chunks))
            else:
                await _close(stream)
            raise
        except BaseException:
            await _close(stream)
            raise

    async def _connect(self) -> anyio.abc.ByteStream:
        t = self.timeouts
        try:
            with anyio.fail_after(t.connect):
                if self.tls:
                    if self._ssl is None:  # reading the CA bundle blocks: once, in a thread
                        self._ssl = await anyio.to_thread.run_sync(ssl.create_default_context)
                    stream = await anyio.connect_tcp(self.host, self.port, tls=True, ssl_context=self._ssl, tls_hostname=self.host)
                else:
                    stream = await anyio.connect_tcp(self.host, self.port)
        except TimeoutError:
            raise ConnectTimeout(f"connecting to {self.host}:{self.port} took over {t.connect:g} s") from None
        except OSError as exc:
            raise ConnectError(f"{exc.strerror or exc}") from exc
        self.connections_opened += 1
        return stream

    async def _release(self, stream: anyio.abc.ByteStream, reusable: bool) -> None:
        try:
            if reusable:
                self._idle.append(stream)
            else:
                await _close(stream)
        finally:
            self._slots.release()

    async def aclose(self) -> None:
        idle, self._idle = self._idle, []
        for stream in idle:
            await _close(stream)


async def _close(stream: anyio.abc.ByteStream) -> None:
    with anyio.CancelScope(shield=True):
        try:
            await stream.aclose()
        except _BROKEN:
            pass
