"""Version 1 of the surface <-> conductor protocol: msgspec Structs, one tagged union per direction.

The tag field is ``type``. Unknown fields are ignored, so newer peers interoperate with older
ones: new fields always get defaults and existing annotations never change (the schema-evolution
rules of docs/protocol.md). Codecs are built once at import; call :func:`decode_client` and
:func:`encode` rather than building encoders per message.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec

from .avatar_grammar import AvatarCommand, AvatarState
from .errors import BadMessage

__all__ = [
    "Avatar",
    "AvatarCacheStats",
    "Cancel",
    "Chat",
    "ClientMessage",
    "ClientPing",
    "ClientPong",
    "Codec",
    "Done",
    "Error",
    "Hello",
    "HistoryMessage",
    "HistoryReply",
    "HistoryRequest",
    "ModelInfo",
    "ModelsReply",
    "ModelsRequest",
    "PROTOCOL_VERSION",
    "SUPPORTED_VERSIONS",
    "ServerMessage",
    "ServerPing",
    "ServerPong",
    "SpriteCell",
    "SpriteReply",
    "SpriteRequest",
    "State",
    "Stats",
    "StatusReply",
    "StatusRequest",
    "Token",
    "Welcome",
    "decode_client",
    "decode_server",
    "encode",
]

PROTOCOL_VERSION = 1
SUPPORTED_VERSIONS = (1,)

Codec = Literal["msgpack", "json"]


class _Msg(msgspec.Struct, tag_field="type", omit_defaults=True):
    pass


# ---------------------------------------------------------------- surface -> conductor


class Hello(_Msg, tag="hello"):
    protocol: int
    surface: str = "unknown"
    token: str | None = None
    capabilities: list[str] = []


class Chat(_Msg, tag="chat"):
    id: str
    content: str
    conversation: str = "default"
    model: str | None = None
    options: dict[str, Any] | None = None
    system: str | None = None  # sets the conversation's system prompt from this turn on


class Cancel(_Msg, tag="cancel"):
    id: str


class ClientPing(_Msg, tag="ping"):
    seq: int = 0


class ClientPong(_Msg, tag="pong"):
    seq: int = 0


class ModelsRequest(_Msg, tag="models"):
    pass


class StatusRequest(_Msg, tag="status"):
    pass


class HistoryRequest(_Msg, tag="history"):
    conversation: str = "default"


class SpriteRequest(_Msg, tag="sprite"):
    """Ask for the avatar's sprite for a mood and size (docs/avatar.md); answered by ``sprite``."""

    mood: str
    size: str = "small"
    variant: int = 0


ClientMessage = (
    Hello
    | Chat
    | Cancel
    | ClientPing
    | ClientPong
    | ModelsRequest
    | StatusRequest
    | HistoryRequest
    | SpriteRequest
)

# ---------------------------------------------------------------- conductor -> surface


class Welcome(_Msg, tag="welcome"):
    session: str
    protocol: int
    server_version: str
    models: list[str] = []
    default_model: str | None = None
    avatar: AvatarState | None = None  # only for surfaces with the `avatar` capability


class Token(_Msg, tag="token"):
    id: str
    text: str


class Stats(msgspec.Struct, omit_defaults=True):
    backend: str
    model: str
    ttft_ms: float
    tokens: int
    tokens_per_s: float
    finish_reason: str
    load_ms: float | None = None
    attempts: int = 1


class Done(_Msg, tag="done"):
    id: str
    stats: Stats


class Error(_Msg, tag="error"):
    # str, not ErrorCode: a client must still decode an error whose code a newer server added
    code: str
    message: str
    retryable: bool = False
    id: str | None = None
    retry_after_ms: int | None = None


class ServerPing(_Msg, tag="ping"):
    seq: int = 0


class ServerPong(_Msg, tag="pong"):
    seq: int = 0


class ModelInfo(msgspec.Struct, omit_defaults=True):
    name: str
    backend: str
    loaded: bool | None = None


class ModelsReply(_Msg, tag="models"):
    models: list[ModelInfo]


class AvatarCacheStats(msgspec.Struct):
    type: str
    entries: int
    bytes: int
    budget_bytes: int
    pinned: int
    hits: int
    misses: int
    evictions: int


class StatusReply(_Msg, tag="status"):
    server_version: str
    uptime_s: float
    sessions: int
    active_chats: int
    backends: dict[str, dict[str, Any]]
    router: str
    transports: list[str]
    avatar_cache: AvatarCacheStats | None = None
    tasks: int | None = None  # event-loop tasks alive in the conductor (for leak checks), when known


class HistoryMessage(msgspec.Struct, omit_defaults=True):
    role: str
    content: str
    interrupted: bool = False


class HistoryReply(_Msg, tag="history"):
    conversation: str
    messages: list[HistoryMessage]


class State(_Msg, tag="state"):
    """Reply phase, sent only to surfaces that list ``state`` in ``hello.capabilities``."""

    id: str
    phase: str  # waiting | streaming | idle | error (str so new phases don't break old clients)


class Avatar(_Msg, tag="avatar"):
    """The avatar changed: its whole state after the change, and the commands that caused it (in
    the order the model wrote them). Sent only to surfaces with the ``avatar`` capability;
    ``id`` is the chat whose reply caused it."""

    state: AvatarState
    id: str | None = None
    commands: list[AvatarCommand] = []


class SpriteCell(msgspec.Struct, array_like=True, omit_defaults=True, frozen=True):
    """One character cell, on the wire as ``[ch, fg?, bg?]``; colours are ``#rrggbb``, a missing
    colour is transparent."""

    ch: str
    fg: str | None = None
    bg: str | None = None


class SpriteReply(_Msg, tag="sprite"):
    """A sprite: ``cells`` holds ``width * height`` cells row by row."""

    key: str
    width: int
    height: int
    cells: list[SpriteCell]
    mood: str = ""
    size: str = ""
    variant: int = 0


ServerMessage = (
    Welcome
    | Token
    | Done
    | Error
    | ServerPing
    | ServerPong
    | ModelsReply
    | StatusReply
    | HistoryReply
    | State
    | Avatar
    | SpriteReply
)

# ---------------------------------------------------------------- codecs (built once)

_encoders = {"msgpack": msgspec.msgpack.Encoder(), "json": msgspec.json.Encoder()}
_client_decoders = {
    "msgpack": msgspec.msgpack.Decoder(ClientMessage),
    "json": msgspec.json.Decoder(ClientMessage),
}
_server_decoders = {
    "msgpack": msgspec.msgpack.Decoder(ServerMessage),
    "json": msgspec.json.Decoder(ServerMessage),
}


def encode(message: Any, codec: Codec = "msgpack") -> bytes:
    return _encoders[codec].encode(message)


def decode_client(data: bytes, codec: Codec = "msgpack") -> ClientMessage:
    """Decode one surface message or raise :class:`BadMessage` saying what was wrong and where."""
    try:
        return _client_decoders[codec].decode(data)
    except msgspec.ValidationError as exc:
        raise BadMessage(f"invalid message: {exc}") from exc
    except msgspec.DecodeError as exc:
        raise BadMessage(f"undecodable {codec} payload: {exc}") from exc
    except UnicodeDecodeError as exc:  # msgspec raises this, not DecodeError, for a string that is not UTF-8
        raise BadMessage(f"undecodable {codec} payload: a string is not valid UTF-8 ({exc.reason} at byte {exc.start})") from exc
    except RecursionError as exc:  # msgspec's guard against deeply nested input
        raise BadMessage(f"undecodable {codec} payload: nested too deeply") from exc


def decode_server(data: bytes, codec: Codec = "msgpack") -> ServerMessage:
    """Decode one conductor message (used by clients); raises ``msgspec.DecodeError``."""
    return _server_decoders[codec].decode(data)
