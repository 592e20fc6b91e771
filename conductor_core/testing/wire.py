"""Small helpers for tests that speak the protocol message by message."""

from __future__ import annotations

from ..protocol import Done, Error, Hello, Token

__all__ = ["collect", "handshake"]


async def handshake(client, **hello):
    """Send ``hello`` and return the first reply (a ``welcome`` or an ``error``)."""
    await client.send(Hello(protocol=1, surface="test", **hello))
    return await client.receive()


async def collect(client, chat_id: str, *, others: list | None = None):
    """Read until ``done``/``error`` for ``chat_id``. Returns ``(text, token_messages, final)``;
    other messages are appended to ``others`` when given."""
    parts, tokens = [], 0
    while True:
        msg = await client.receive()
        if isinstance(msg, Token) and msg.id == chat_id:
            parts.append(msg.text)
            tokens += 1
        elif isinstance(msg, (Done, Error)) and msg.id == chat_id:
            return "".join(parts), tokens, msg
        elif others is not None:
            others.append(msg)
