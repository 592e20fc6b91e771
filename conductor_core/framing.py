"""Sans-I/O length-prefix framing: 4-byte big-endian length, then the payload.

No sockets, tasks or clocks here: a transport feeds received bytes to
:meth:`FrameDecoder.receive_data` and takes complete payloads from
:meth:`FrameDecoder.events_received`. The declared length is checked against ``max_size``
as soon as the 4 prefix bytes are in, *before* any of the body is buffered, so a peer cannot
make us allocate more than ``max_size`` plus one read.
"""

from __future__ import annotations

import struct

from .errors import TooLarge

__all__ = ["FrameDecoder", "HEADER_SIZE", "encode_frame"]

HEADER_SIZE = 4
_HEADER = struct.Struct(">I")


def encode_frame(payload: bytes) -> bytes:
    return _HEADER.pack(len(payload)) + payload


class FrameDecoder:
    """Incremental decoder. After it raises :class:`TooLarge` it stays failed."""

    __slots__ = ("max_size", "_buffer", "_events", "_need", "_failed")

    def __init__(self, max_size: int = 1 << 20) -> None:
        self.max_size = max_size
        self._buffer = bytearray()
        self._events: list[bytes] = []
        self._need: int | None = None  # body length once the header is parsed
        self._failed: TooLarge | None = None

    def receive_data(self, data: bytes) -> None:
        if self._failed is not None:
            raise self._failed
        self._buffer += data
        buf = self._buffer
        pos = 0
        while True:
            if self._need is None:
                if len(buf) - pos < HEADER_SIZE:
                    break
                (need,) = _HEADER.unpack_from(buf, pos)
                if need > self.max_size:
                    del buf[:]
                    self._failed = TooLarge(
                        f"frame of {need} bytes exceeds the maximum of {self.max_size} bytes"
                    )
                    raise self._failed
                pos += HEADER_SIZE
                self._need = need
            if len(buf) - pos < self._need:
                break
            end = pos + self._need
            self._events.append(bytes(buf[pos:end]))
            pos = end
            self._need = None
        if pos:
            del buf[:pos]

    def events_received(self) -> list[bytes]:
        events, self._events = self._events, []
        return events

    @property
    def buffered(self) -> int:
        """Bytes held for an incomplete frame (for tests and status)."""
        return len(self._buffer)
