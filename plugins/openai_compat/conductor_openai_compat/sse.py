"""A sans-I/O Server-Sent Events parser and the msgspec views of OpenAI stream chunks.

The parser has no sockets, tasks or clocks: feed it bytes as they arrive and it returns the
events completed so far. It never waits for a fixed amount of data, so a token reaches the
caller as soon as the blank line that ends its event has arrived (hot-path rule 1).

It follows the WHATWG event-stream rules that matter for chat streams: lines end with
``\\r\\n``, ``\\n`` or ``\\r`` (a ``\\r`` at the end of one chunk and a ``\\n`` at the start of
the next are one line ending); ``:`` lines are comments (keep-alive pings); ``data:`` lines of
one event are joined with ``\\n``; a blank line dispatches the event; ``event:``/``id:`` set
its type and id; ``retry:`` and unknown fields are ignored; a leading UTF-8 BOM is dropped.
Data stays ``bytes`` so msgspec decodes JSON straight from it.
"""

from __future__ import annotations

import msgspec

__all__ = [
    "ChunkChoice",
    "ChunkDelta",
    "ChunkTimings",
    "ChunkUsage",
    "ErrorBody",
    "ErrorEnvelope",
    "SSEError",
    "SSEEvent",
    "SSEParser",
    "StreamChunk",
    "chunk_decoder",
    "error_decoder",
]

_BOM = b"\xef\xbb\xbf"
MAX_LINE_BYTES = 4 << 20  # one line without its ending
MAX_EVENT_BYTES = 16 << 20  # one event's joined data lines (endless "data:" lines, no blank line)


class SSEError(ValueError):
    """The byte stream is not a usable event stream (e.g. a line longer than the limit)."""


class SSEEvent(msgspec.Struct, frozen=True):
    """One dispatched event. ``event`` is ``"message"`` unless an ``event:`` line said otherwise."""

    data: bytes
    event: str = "message"
    id: str | None = None


class SSEParser:
    """Incremental event-stream parser: ``feed(bytes) -> [SSEEvent]``, then ``close()``.

    >>> p = SSEParser()
    >>> p.feed(b'data: {"a"') + p.feed(b': 1}\\n\\n')
    [SSEEvent(data=b'{"a": 1}', event='message', id=None)]
    """

    __slots__ = ("_buffer", "_data", "_data_bytes", "_event", "_id", "_skip_lf", "_started", "max_event_bytes", "max_line_bytes")

    def __init__(self, *, max_line_bytes: int = MAX_LINE_BYTES, max_event_bytes: int = MAX_EVENT_BYTES) -> None:
        self.max_line_bytes = max_line_bytes
        self.max_event_bytes = max_event_bytes  # data lines of one event, before its blank line
        self._data_bytes = 0
        self._buffer = b""
        self._data: list[bytes] = []
        self._event = ""
        self._id: str | None = None
        self._skip_lf = False
        self._started = False

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        """Consume ``chunk``; return every event it completed (possibly none)."""
        if not chunk:
            return []
        if self._skip_lf:
            self._skip_lf = False
            if chunk[:1] == b"\n":
                chunk = chunk[1:]
        data = self._buffer + chunk if self._buffer else chunk
        if not self._started:
            if len(data) < len(_BOM) and _BOM.startswith(data):
                self._buffer = data
                return []
            self._started = True
            if data.startswith(_BOM):
                data = data[len(_BOM) :]
        lines = data.splitlines(keepends=True)
        events: list[SSEEvent] = []
        self._buffer = b""
        for line in lines:
            if line.endswith(b"\n"):
                content = line[:-2] if line.endswith(b"\r\n") else line[:-1]
            elif line.endswith(b"\r"):
                content = line[:-1]
            else:  # the last, incomplete line: keep it for the next chunk
                if len(line) > self.max_line_bytes:
                    raise SSEError(f"event-stream line longer than {self.max_line_bytes} bytes")
                self._buffer = line
                break
            event = self._line(content)
            if event is not None:
                events.append(event)
        if data.endswith(b"\r"):
            self._skip_lf = True  # a "\n" opening the next chunk completes this "\r\n"
        return events

    def close(self) -> SSEEvent | None:
        """End of stream. Returns an event whose blank line never came, if any, so the caller can
        decide (the spec discards it; an OpenAI client may still accept a final ``[DONE]``)."""
        if self._buffer:
            self._line(self._buffer)
            self._buffer = b""
        return self._dispatch()

    def _line(self, line: bytes) -> SSEEvent | None:
        if not line:
            return self._dispatch()
        if line[:1] == b":":
            return None
        name, sep, value = line.partition(b":")
        if sep and value[:1] == b" ":
            value = value[1:]
        if name == b"data":
            self._data_bytes += len(value) + 1
            if self._data_bytes > self.max_event_bytes:
                raise SSEError(f"event-stream event longer than {self.max_event_bytes} bytes")
            self._data.append(value)
        elif name == b"event":
            self._event = value.decode("utf-8", "replace")
        elif name == b"id" and b"\0" not in value:
            self._id = value.decode("utf-8", "replace")
        return None

    def _dispatch(self) -> SSEEvent | None:
        if not self._data:
            self._event = ""
            return None
        data = self._data[0] if len(self._data) == 1 else b"\n".join(self._data)
        event = SSEEvent(data, self._event or "message", self._id)
        self._data = []
        self._data_bytes = 0
        self._event = ""
        return event


# --- views of the OpenAI chat-completions stream: only the fields the backend uses ---


class ChunkDelta(msgspec.Struct, frozen=True):
    content: str | None = None


class ChunkChoice(msgspec.Struct):
    delta: ChunkDelta = ChunkDelta()
    finish_reason: str | None = None
    index: int = 0


class ChunkUsage(msgspec.Struct):
    prompt_tokens: int | None = None
    completion_tokens: int | None = None


class ChunkTimings(msgspec.Struct):
    """llama.cpp's own timings (in the usage chunk): generation time for tokens/s."""

    predicted_ms: float | None = None
    prompt_ms: float | None = None


class ErrorBody(msgspec.Struct):
    message: str = ""
    type: str | None = None
    code: str | int | None = None


class StreamChunk(msgspec.Struct):
    """``chat.completion.chunk``; ``error`` is set when a server reports a failure mid-stream."""

    choices: list[ChunkChoice] = []
    model: str | None = None
    usage: ChunkUsage | None = None
    timings: ChunkTimings | None = None
    error: ErrorBody | str | None = None


class ErrorEnvelope(msgspec.Struct):
    """An error response body: ``{"error": {"message", "type", "code"}}`` (or a bare string)."""

    error: ErrorBody | str | None = None
    message: str | None = None  # some servers put it at the top level
    detail: str | None = None  # FastAPI-based servers


chunk_decoder = msgspec.json.Decoder(StreamChunk)
error_decoder = msgspec.json.Decoder(ErrorEnvelope)
