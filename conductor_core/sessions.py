"""Sessions and conversations: one session per connection, isolated from every other.

The system we re-imagine broadcast one shared session to every surface; here a session is owned
by exactly one connection and nothing outside it can read, cancel or clear its conversations.
"""

from __future__ import annotations

import secrets

from .backends import Message
from .errors import Overloaded, RateLimited
from .protocol import HistoryMessage

__all__ = ["Conversation", "Session"]


class Conversation:
    __slots__ = ("name", "messages", "system", "active", "max_messages")

    def __init__(self, name: str, system: str | None, max_messages: int = 1000) -> None:
        self.name = name
        self.messages: list[HistoryMessage] = []
        self.max_messages = max_messages  # stored history bound: the oldest turns are dropped
        self.system = system
        self.active: str | None = None  # id of the chat streaming into it, if any

    def request_messages(self, content: str, window: int) -> list[Message]:
        """System prompt, then the last ``window`` history messages, then the new user turn."""
        out = [Message("system", self.system)] if self.system else []
        history = self.messages[-window:] if window > 0 else []
        # never start the window on an assistant turn cut from its question
        while history and history[0].role == "assistant":
            history = history[1:]
        out.extend(Message(m.role, m.content) for m in history)
        out.append(Message("user", content))
        return out

    def record(self, content: str, reply: str, *, interrupted: bool) -> None:
        self.messages.append(HistoryMessage("user", content))
        self.messages.append(HistoryMessage("assistant", reply, interrupted))
        excess = len(self.messages) - self.max_messages
        if excess > 0:  # drop whole turns (user + assistant) from the front
            del self.messages[: excess + (excess & 1)]

    def __repr__(self) -> str:
        return f"<Conversation {self.name!r} messages={len(self.messages)} active={self.active!r}>"


class Session:
    """A connection's conversations. ``max_conversations`` and ``max_stored_messages`` (per
    conversation) bound memory per connection."""

    def __init__(self, *, system: str | None, max_conversations: int, max_stored_messages: int = 1000) -> None:
        self.id = secrets.token_hex(8)
        self.system = system
        self.max_conversations = max_conversations
        self.max_stored_messages = max_stored_messages
        self.conversations: dict[str, Conversation] = {}

    def conversation(self, name: str, *, create: bool = True) -> Conversation | None:
        conv = self.conversations.get(name)
        if conv is None and create:
            if len(self.conversations) >= self.max_conversations:
                raise RateLimited(
                    f"this session already has {self.max_conversations} conversations; "
                    "reuse one or reconnect for a fresh session"
                )
            conv = self.conversations[name] = Conversation(name, self.system, self.max_stored_messages)
        return conv

    def claim(self, conv: Conversation, chat_id: str) -> None:
        if conv.active is not None:
            raise Overloaded(
                f"conversation {conv.name!r} is still streaming reply {conv.active!r}; "
                "cancel it or use another conversation"
            )
        conv.active = chat_id

    def __repr__(self) -> str:
        return f"<Session {self.id} conversations={len(self.conversations)}>"
