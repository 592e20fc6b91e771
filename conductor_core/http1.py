"""Sans-I/O HTTP/1.1 response parsing for backends' streaming hot path.

Why not httpx here: measured on this project's benchmark, httpx spends ~2 ms of Python per
streamed request before the first byte and tens of µs per chunk (h11 and httpcore layers),
which is most of the conductor's cost per token. A backend stream needs a small subset of
HTTP/1.1: one request, a status line, headers, then a body framed by ``Content-Length``,
``Transfer-Encoding: chunked`` or connection close. This module parses exactly that from bytes
fed to it (no sockets, no clocks), so it is tested over every split of its input.
"""

from __future__ import annotations

__all__ = ["HTTPProtocolError", "ResponseHead", "ResponseParser", "encode_request"]

MAX_HEAD = 64 * 1024
MAX_CHUNK_LINE = 1024


class HTTPProtocolError(Exception):
    """The peer does not speak the HTTP/1.1 we expect."""


class ResponseHead:
    __slots__ = ("status", "reason", "headers", "keep_alive")

    def __init__(self, status: int, reason: str, headers: dict[str, str], keep_alive: bool) -> None:
        self.status, self.reason, self.headers, self.keep_alive = status, reason, headers, keep_alive

    def __repr__(self) -> str:
        return f"<ResponseHead {self.status} {self.reason!r}>"


def encode_request(method: str, target: str, host: str, headers: dict[str, str], body: bytes) -> bytes:
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host}", f"Content-Length: {len(body)}"]
    lines.extend(f"{k}: {v}" for k, v in headers.items())
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


_HEAD, _LENGTH, _CHUNK_SIZE, _CHUNK_DATA, _CHUNK_CRLF, _TRAILERS, _UNTIL_CLOSE, _DONE = range(8)


class ResponseParser:
    """Feed received bytes; ``head`` appears once parsed; ``feed`` returns body pieces.

    ``complete`` turns True when the body ended by its framing (the connection may then be
    reused if ``head.keep_alive``). ``eof()`` tells the parser the peer closed.
    """

    __slots__ = ("head", "complete", "_state", "_buf", "_left", "_head_only")

    def __init__(self, *, head_request: bool = False) -> None:
        self.head: ResponseHead | None = None
        self.complete = False
        self._state = _HEAD
        self._buf = b""
        self._left = 0
        self._head_only = head_request

    def feed(self, data: bytes) -> list[bytes]:
        out: list[bytes] = []
        buf = self._buf + data if self._buf else data
        self._buf = b""
        while buf:
            state = self._state
            if state == _HEAD:
                end = buf.find(b"\r\n\r\n")
                if end < 0:
                    if len(buf) > MAX_HEAD:
                        raise HTTPProtocolError(f"response head longer than {MAX_HEAD} bytes")
                    self._buf = buf
                    return out
                self._parse_head(buf[:end])
                buf = buf[end + 4 :]
            elif state == _LENGTH:
                if len(buf) >= self._left:
                    out.append(buf[: self._left])
                    buf = buf[self._left :]
                    self._finish()
                else:
                    out.append(buf)
                    self._left -= len(buf)
                    return out
            elif state == _CHUNK_SIZE:
                end = buf.find(b"\r\n")
                if end < 0:
                    if len(buf) > MAX_CHUNK_LINE:
                        raise HTTPProtocolError("chunk size line too long")
                    self._buf = buf
                    return out
                size_text = buf[:end].split(b";", 1)[0].strip()
                try:
                    self._left = int(size_text, 16)
                except ValueError:
                    raise HTTPProtocolError(f"bad chunk size {size_text[:20]!r}") from None
                if self._left < 0:
                    raise HTTPProtocolError("negative chunk size")
                buf = buf[end + 2 :]
                self._state = _TRAILERS if self._left == 0 else _CHUNK_DATA
            elif state == _CHUNK_DATA:
                if len(buf) >= self._left:
                    out.append(buf[: self._left])
                    buf = buf[self._left :]
                    self._state = _CHUNK_CRLF
                else:
                    out.append(buf)
                    self._left -= len(buf)
                    return out
            elif state == _CHUNK_CRLF:
                if len(buf) < 2:
                    self._buf = buf
                    return out
                if buf[:2] != b"\r\n":
                    raise HTTPProtocolError("chunk not followed by CRLF")
                buf = buf[2:]
                self._state = _CHUNK_SIZE
            elif state == _TRAILERS:
                end = buf.find(b"\r\n")
                if end < 0:
                    if len(buf) > MAX_HEAD:
                        raise HTTPProtocolError("trailers too long")
                    self._buf = buf
                    return out
                buf = buf[end + 2 :]
                if end == 0:
                    self._finish()
            elif state == _UNTIL_CLOSE:
                out.append(buf)
                return out
            else:  # _DONE: bytes after the body mean the connection cannot be reused
                if self.head is not None:
                    self.head.keep_alive = False
                return out
        return out

    def eof(self) -> None:
        """The peer closed. Fine for a close-delimited body; otherwise the body was cut."""
        if self._state == _UNTIL_CLOSE:
            self._finish()
        elif self._state != _DONE:
            raise HTTPProtocolError("connection closed before the response ended")

    def _finish(self) -> None:
        self._state = _DONE
        self.complete = True

    def _parse_head(self, raw: bytes) -> None:
        try:
            text = raw.decode("latin-1")
        except UnicodeDecodeError:  # pragma: no cover - latin-1 decodes every byte
            raise HTTPProtocolError("undecodable response head") from None
        status_line, *lines = text.split("\r\n")
        parts = status_line.split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/1."):
            raise HTTPProtocolError(f"not an HTTP/1.x response: {status_line[:60]!r}")
        try:
            status = int(parts[1])
        except ValueError:
            raise HTTPProtocolError(f"bad status code in {status_line[:60]!r}") from None
        headers: dict[str, str] = {}
        for line in lines:
            name, sep, value = line.partition(":")
            if not sep:
                raise HTTPProtocolError(f"bad header line {line[:60]!r}")
            headers[name.strip().lower()] = value.strip()
        connection = headers.get("connection", "").lower()
        keep_alive = parts[0] == "HTTP/1.1" and "close" not in connection
        self.head = ResponseHead(status, parts[2] if len(parts) > 2 else "", headers, keep_alive)
        if status < 200 and status != 101:  # 1xx interim response: wait for the real one
            self.head = None
            return
        if self._head_only or status in (204, 304):
            self._finish()
        elif "chunked" in headers.get("transfer-encoding", "").lower():
            self._state = _CHUNK_SIZE
        elif "content-length" in headers:
            try:
                self._left = int(headers["content-length"])
            except ValueError:
                raise HTTPProtocolError("bad Content-Length") from None
            if self._left < 0:
                raise HTTPProtocolError("negative Content-Length")
            self._state = _LENGTH
            if self._left == 0:
                self._finish()
        else:
            self._state = _UNTIL_CLOSE
            self.head.keep_alive = False
