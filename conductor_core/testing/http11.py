"""A tiny HTTP/1.1 server on anyio TCP listeners, for emulating model servers in tests.

Why not a framework: the emulator must be a *real* server (real sockets, real keep-alive, real
chunked streams) with no extra dependency, fast enough that a benchmark measures the client
and not the server, and it must notice a client that goes away mid-request (to count cancelled
streams and to abort a model load like Ollama does). A framework hides exactly that last part.

Scope: request bodies by ``Content-Length`` only, keep-alive (HTTP/1.1 default, ``Connection:
close`` honoured), fixed-length responses and chunked streams. One request at a time per
connection; while a handler runs, a watcher task reads the socket so that an EOF from the client
cancels the handler (``Request.disconnected`` is then set).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from email.utils import formatdate
from typing import Any

import anyio
import anyio.abc

__all__ = ["DropConnection", "HTTPServer", "Request", "Response", "StreamWriter"]

log = logging.getLogger("conductor.testing.http11")

MAX_HEAD = 64 * 1024
MAX_BODY = 64 * 1024 * 1024

REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    411: "Length Required",
    413: "Payload Too Large",
    429: "Too Many Requests",
    431: "Request Header Fields Too Large",
    499: "Client Closed Request",
    500: "Internal Server Error",
    501: "Not Implemented",
    502: "Bad Gateway",
    503: "Service Unavailable",
}


class _ClientGone(Exception):
    """The peer closed its side; internal to this module."""


class DropConnection(Exception):
    """Raised by a handler to cut the connection at once (no end of body): a server crash."""


class Request:
    """One parsed request. ``headers`` keys are lower case."""

    __slots__ = ("method", "path", "query", "version", "headers", "body", "disconnected", "conn_id", "state")

    def __init__(self, method: str, target: str, version: str, headers: dict[str, str], body: bytes, conn_id: int):
        self.method = method
        self.path, _, self.query = target.partition("?")
        self.version = version
        self.headers = headers
        self.body = body
        self.disconnected = False
        self.conn_id = conn_id
        self.state = ""  # free for the handler: e.g. "load", "stream", "done"


class Response:
    """A complete (fixed-length) response."""

    __slots__ = ("status", "body", "content_type", "headers")

    def __init__(self, status: int, body: bytes = b"", content_type: str = "application/json; charset=utf-8", headers: dict[str, str] | None = None):
        self.status = status
        self.body = body
        self.content_type = content_type
        self.headers = headers


def _date() -> str:
    return formatdate(usegmt=True)


def status_line(status: int) -> bytes:
    return f"HTTP/1.1 {status} {REASONS.get(status, 'Unknown')}\r\n".encode("ascii")


class StreamWriter:
    """Chunked response body. The head goes out with the first chunk, so a handler that has not
    written yet has sent no byte at all (that is how Ollama behaves during a model load)."""

    __slots__ = ("_stream", "_head", "started", "closed_by_peer")

    def __init__(self, stream: anyio.abc.ByteStream, status: int, content_type: str):
        self._stream = stream
        self._head = (
            status_line(status)
            + f"Content-Type: {content_type}\r\nDate: {_date()}\r\nTransfer-Encoding: chunked\r\n\r\n".encode("ascii")
        )
        self.started = False
        self.closed_by_peer = False

    async def write(self, data: bytes) -> None:
        """Send one chunk in one socket write (the head too, the first time)."""
        frame = b"%x\r\n%b\r\n" % (len(data), data)
        if not self.started:
            frame = self._head + frame
            self.started = True
        await self._send(frame)

    async def write_raw(self, data: bytes) -> None:
        if not self.started:
            data = self._head + data
            self.started = True
        await self._send(data)

    async def _send(self, data: bytes) -> None:
        try:
            await self._stream.send(data)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError) as exc:
            self.closed_by_peer = True
            raise _ClientGone() from exc

    async def end(self) -> None:
        await self.write_raw(b"0\r\n\r\n")


Handler = Callable[[Request, Callable[[int, str], StreamWriter]], Awaitable[Response | None]]


class HTTPServer:
    """Serve ``handler`` on ``host:port`` (port 0: any free port, read back from ``.port``).

    ``handler(request, start_stream)`` returns a :class:`Response`, or calls
    ``start_stream(status, content_type)`` to get a :class:`StreamWriter`, writes, and returns
    None (the server ends the chunked body). If the client disconnects, the handler is
    cancelled and ``on_disconnect(request)`` is called.
    """

    def __init__(
        self,
        handler: Handler,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        on_connection: Callable[[], None] | None = None,
        on_disconnect: Callable[[Request, bool], None] | None = None,
    ) -> None:
        self.handler = handler
        self.host = host
        self.port = port
        self.on_connection = on_connection
        self.on_disconnect = on_disconnect
        self._conn_ids = 0
        self.errors: list[str] = []  # handler bugs (the connection got a 500 and was closed)

    async def serve(self, *, task_status: anyio.abc.TaskStatus[Any] = anyio.TASK_STATUS_IGNORED) -> None:
        listener = await anyio.create_tcp_listener(local_host=self.host, local_port=self.port, reuse_port=False)
        async with listener:
            self.port = listener.extra(anyio.abc.SocketAttribute.local_port)
            task_status.started(self.port)
            await listener.serve(self._connection)

    async def _connection(self, stream: anyio.abc.SocketStream) -> None:
        self._conn_ids += 1
        conn_id = self._conn_ids
        if self.on_connection is not None:
            self.on_connection()
        buf = bytearray()
        async with stream:
            try:
                while True:
                    request = await self._read_request(stream, buf, conn_id)
                    if request is None:
                        return
                    keep = await self._dispatch(stream, request, buf)
                    if not keep:
                        return
            except (_ClientGone, anyio.BrokenResourceError, anyio.ClosedResourceError, anyio.EndOfStream, OSError):
                return
            except Exception as exc:  # a handler bug: answer 500, keep serving other connections
                log.exception("handler failed")
                self.errors.append(f"{type(exc).__name__}: {exc}")
                with anyio.move_on_after(1):
                    try:
                        await stream.send(_plain(500, b"emulator internal error", close=True))
                    except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                        pass

    async def _read_request(self, stream: anyio.abc.SocketStream, buf: bytearray, conn_id: int) -> Request | None:
        while True:
            end = buf.find(b"\r\n\r\n")
            if end >= 0:
                break
            if len(buf) > MAX_HEAD:
                await stream.send(_plain(431, b"request head too large", close=True))
                return None
            try:
                data = await stream.receive()
            except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
                return None
            buf += data
        head = bytes(buf[:end]).decode("latin-1")
        del buf[: end + 4]
        lines = head.split("\r\n")
        try:
            method, target, version = lines[0].split(" ", 2)
        except ValueError:
            await stream.send(_plain(400, b"malformed request line", close=True))
            return None
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if not sep:
                await stream.send(_plain(400, b"malformed header line", close=True))
                return None
            headers[name.strip().lower()] = value.strip()
        if "chunked" in headers.get("transfer-encoding", "").lower():
            await stream.send(_plain(501, b"chunked request bodies are not supported", close=True))
            return None
        try:
            length = int(headers.get("content-length", "0"))
        except ValueError:
            await stream.send(_plain(400, b"bad content-length", close=True))
            return None
        if length < 0 or length > MAX_BODY:
            await stream.send(_plain(413, b"body too large", close=True))
            return None
        if headers.get("expect", "").lower() == "100-continue" and len(buf) < length:
            await stream.send(b"HTTP/1.1 100 Continue\r\n\r\n")
        while len(buf) < length:
            try:
                buf += await stream.receive()
            except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
                return None
        body = bytes(buf[:length])
        del buf[:length]
        return Request(method, target, version, headers, body, conn_id)

    async def _dispatch(self, stream: anyio.abc.SocketStream, request: Request, buf: bytearray) -> bool:
        keep = request.version == "HTTP/1.1" and request.headers.get("connection", "").lower() != "close"
        writer: StreamWriter | None = None

        def start_stream(status: int, content_type: str) -> StreamWriter:
            nonlocal writer
            writer = StreamWriter(stream, status, content_type)
            return writer

        result: Response | None = None
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._watch, stream, buf, request, tg.cancel_scope)
            try:
                result = await self.handler(request, start_stream)
                if writer is not None:
                    await writer.end()
                elif result is not None:
                    await stream.send(_encode(result, keep, head_only=request.method == "HEAD"))
            except _ClientGone:
                request.disconnected = True
            except DropConnection:
                tg.cancel_scope.cancel()
                return False
            tg.cancel_scope.cancel()
        if request.disconnected:
            if self.on_disconnect is not None:
                self.on_disconnect(request, writer is not None and writer.started)
            return False
        if result is None and writer is None:  # handler chose to drop the connection
            return False
        return keep

    async def _watch(self, stream: anyio.abc.SocketStream, buf: bytearray, request: Request, scope: anyio.CancelScope) -> None:
        """Read while the handler runs: keep pipelined bytes, cancel the handler on EOF."""
        try:
            while True:
                buf += await stream.receive()
        except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            request.disconnected = True
            scope.cancel()


def _encode(response: Response, keep: bool, head_only: bool = False) -> bytes:
    extra = "".join(f"{k}: {v}\r\n" for k, v in (response.headers or {}).items())
    head = (
        status_line(response.status)
        + (
            f"Content-Type: {response.content_type}\r\nDate: {_date()}\r\nContent-Length: {len(response.body)}\r\n"
            f"{extra}{'' if keep else 'Connection: close' + chr(13) + chr(10)}\r\n"
        ).encode("latin-1")
    )
    return head if head_only else head + response.body


def _plain(status: int, text: bytes, close: bool = False) -> bytes:
    return _encode(Response(status, text, "text/plain; charset=utf-8"), keep=not close)
