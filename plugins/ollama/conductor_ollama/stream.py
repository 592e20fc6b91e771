"""Sans-I/O pieces of the Ollama stream: a line splitter and the view structs of one NDJSON line.

Why sans-I/O: the splitter is the one part that sees arbitrary network chunk boundaries, so it
is a pure function of the bytes fed to it, tested with hypothesis over every split. Lines are
split on the byte ``\\n``, which never occurs inside a UTF-8 multi-byte sequence, so a character
cut across two network reads is whole again by the time its line is decoded.
"""

from __future__ import annotations

from typing import Any

import msgspec

from conductor_core.backends import Finish

__all__ = ["ChatLine", "LineSplitter", "LineTooLong", "decode_line", "finish_from", "preview"]

MAX_LINE = 16 * 1024 * 1024


class LineTooLong(ValueError):
    """A line grew past the limit without a newline (not an NDJSON stream)."""


class LineSplitter:
    """Feed bytes as they arrive; get back each complete line (without ``\\n`` or ``\\r``).

    >>> s = LineSplitter()
    >>> s.feed(b'{"a":1}\\n{"b"'), s.feed(b':2}\\n'), s.flush()
    ([b'{"a":1}'], [b'{"b":2}'], b'')
    """

    __slots__ = ("_buf", "_max")

    def __init__(self, max_line: int = MAX_LINE) -> None:
        self._buf = b""
        self._max = max_line

    def feed(self, data: bytes) -> list[bytes]:
        if b"\n" not in data:
            self._buf += data
            if len(self._buf) > self._max:
                raise LineTooLong(f"line longer than {self._max} bytes")
            return []
        parts = (self._buf + data).split(b"\n") if self._buf else data.split(b"\n")
        self._buf = parts.pop()
        if len(self._buf) > self._max:
            raise LineTooLong(f"line longer than {self._max} bytes")
        return [p.rstrip(b"\r") for p in parts if p.strip()]

    def flush(self) -> bytes:
        """What is left at the end of the stream (a last line with no newline), then reset."""
        rest, self._buf = self._buf.rstrip(b"\r"), b""
        return rest if rest.strip() else b""


class _Message(msgspec.Struct):
    content: str = ""


class ChatLine(msgspec.Struct):
    """Only the fields the backend reads from one ``/api/chat`` line."""

    message: _Message | None = None
    done: bool = False
    error: Any = None
    done_reason: str | None = None
    model: str | None = None
    load_duration: int | None = None
    prompt_eval_count: int | None = None
    eval_count: int | None = None
    eval_duration: int | None = None


_decoder = msgspec.json.Decoder(ChatLine)
decode_line = _decoder.decode


def preview(line: bytes, limit: int = 200) -> str:
    """The start of an offending line, for an error message."""
    text = line[:limit].decode("utf-8", "replace")
    return text + ("…" if len(line) > limit else "")


def _seconds(ns: int | None) -> float | None:
    return None if ns is None else ns / 1e9


def finish_from(line: ChatLine, model: str) -> Finish:
    """Map the final line's nanosecond metrics to a :class:`Finish`."""
    return Finish(
        model=line.model or model,
        finish_reason=line.done_reason or "stop",
        completion_tokens=line.eval_count,
        prompt_tokens=line.prompt_eval_count,
        generation_s=_seconds(line.eval_duration),
        load_s=_seconds(line.load_duration),
    )
