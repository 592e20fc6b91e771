"""The avatar: an incremental command parser over a reply's tokens, and one connection's avatar.

A model steers the avatar with inline tags such as ``[yolla:wave]`` or ``[yolla:mood happy]``.
:class:`AvatarParser` is sans-I/O: :meth:`~AvatarParser.feed` takes each token and returns the
text to show (tags removed) and the commands found; text that cannot be part of a tag is
returned at once. Only when a ``[`` could still start ``[PREFIX:`` are characters held back, at
most ``hold_back`` of them; if no tag forms they are released unchanged. The result never
depends on how the text was split into tokens (tests/test_avatar_parser.py checks every split).

What is a tag: ``[PREFIX:`` (case-insensitive), then a body without ``[``, ``]`` or a newline,
then ``]``, at most ``hold_back`` characters in all. A tag whose body is not a command in
:mod:`conductor_core.avatar_grammar` is removed and dropped (logged at debug), so a model's typo
never reaches the reader. ``Array[0]``, ``[link]`` and ``[ ]`` are text.

:class:`AvatarLink` is one connection's avatar: its state (per session), a parser per reply,
the conductor-driven activity (thinking → talking → idle, oops on error), ``avatar`` messages for
surfaces that listed ``avatar`` in ``hello.capabilities``, and ``sprite`` requests.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Protocol

import msgspec

from .avatar_grammar import (
    AvatarCommand,
    AvatarState,
    Hide,
    Mood,
    Move,
    Show,
    Size,
    Stop,
    Wander,
    canonical_mood,
    canonical_size,
    parse_command,
)
from .errors import BadMessage, RateLimited
from .protocol import Avatar, SpriteReply, SpriteRequest
from .sprites import MAX_VARIANT, render_sprite, sprite_key

if TYPE_CHECKING:
    from .avatar_cache import AvatarCache
    from .config import AvatarConfig

__all__ = ["AvatarLink", "AvatarParser", "NO_COMMANDS", "apply_commands"]

log = logging.getLogger("conductor.avatar")

NO_COMMANDS: tuple[AvatarCommand, ...] = ()


class AvatarParser:
    """Removes ``[PREFIX:...]`` tags from one reply's tokens and collects their commands.

    One parser per reply: ``max_commands`` caps the commands of the whole reply, not of a token.
    ``held`` is the text waiting to be decided (empty when nothing is held)::

        parser = AvatarParser("yolla")
        parser.feed("Hi [yol")        # ("Hi ", ())
        parser.feed("la:wave] there") # (" there", (Gesture(name='wave', duration_ms=1500),))
        parser.end()                  # ("", ())
    """

    __slots__ = ("held", "prefix", "max_commands", "hold_back", "accepted", "dropped", "_opener")

    def __init__(self, prefix: str = "yolla", max_commands: int = 10, hold_back: int = 64) -> None:
        opener = f"[{prefix.lower()}:"
        if not prefix or any(c in prefix for c in "[]: \n"):
            raise ValueError(f"avatar prefix {prefix!r} must be a non-empty word without brackets, ':' or spaces")
        if hold_back < len(opener) + 2:
            raise ValueError(f"hold_back ({hold_back}) is too short for a {opener}...] tag")
        self.held = ""
        self.prefix = prefix
        self.max_commands = max_commands
        self.hold_back = hold_back
        self.accepted = 0  # commands returned so far in this reply
        self.dropped = 0  # tags removed without a command: unknown, or over the cap
        self._opener = opener

    def feed(self, text: str) -> tuple[str, Sequence[AvatarCommand]]:
        """The visible part of ``text`` (plus any held text now decided) and its commands.

        Hot path: with nothing held and no ``[`` in ``text`` this returns ``text`` itself.
        """
        if not self.held and "[" not in text:
            return text, NO_COMMANDS
        return self._scan(self.held + text, False)

    def end(self) -> tuple[str, Sequence[AvatarCommand]]:
        """Release what is held at the end of the stream (an unfinished tag is text)."""
        if not self.held:
            return "", NO_COMMANDS
        return self._scan(self.held, True)

    def discard(self) -> None:
        """Forget held text (the backend attempt it came from failed before anything was sent)."""
        self.held = ""

    def _scan(self, buf: str, final: bool) -> tuple[str, Sequence[AvatarCommand]]:
        self.held = ""
        opener = self._opener
        olen = len(opener)
        n = len(buf)
        out: list[str] = []
        commands: list[AvatarCommand] | None = None
        start = 0  # first character not yet copied to ``out``
        i = buf.find("[")
        while i >= 0:
            if n - i < olen:  # the buffer ends inside what may be the opener
                if not final and opener.startswith(buf[i:].lower()):
                    out.append(buf[start:i])
                    self.held = buf[i:]
                    return "".join(out), commands or NO_COMMANDS
                i = buf.find("[", i + 1)
                continue
            body = i + olen
            if buf[i:body].lower() != opener:
                i = buf.find("[", i + 1)
                continue
            limit = i + self.hold_back  # the "]" must come before this index
            stop = min(n, limit)
            close = buf.find("]", body, stop)
            scan_to = close if close >= 0 else stop
            if buf.find("[", body, scan_to) >= 0 or buf.find("\n", body, scan_to) >= 0:
                i = buf.find("[", i + 1)  # not a tag: the "[" is text
                continue
            if close < 0:
                if not final and n < limit:  # undecided: wait for more text
                    out.append(buf[start:i])
                    self.held = buf[i:]
                    return "".join(out), commands or NO_COMMANDS
                i = buf.find("[", i + 1)  # too long, or the stream ended: text
                continue
            out.append(buf[start:i])
            command = self._command(buf[body:close])
            if command is not None:
                if commands is None:
                    commands = [command]
                else:
                    commands.append(command)
            start = close + 1
            i = buf.find("[", start)
        if start == 0:
            return buf, NO_COMMANDS
        out.append(buf[start:])
        return "".join(out), commands or NO_COMMANDS

    def _command(self, body: str) -> AvatarCommand | None:
        command = parse_command(body)
        if command is None:
            self.dropped += 1
            log.debug("dropped unknown avatar command %r", body)
            return None
        if self.accepted >= self.max_commands:
            self.dropped += 1
            log.debug("dropped avatar command %r: over %d commands in this reply", body, self.max_commands)
            return None
        self.accepted += 1
        return command

    def __repr__(self) -> str:
        held, accepted, dropped = self.held, self.accepted, self.dropped
        return f"<AvatarParser prefix={self.prefix!r} {held=} {accepted=} {dropped=}>"


def apply_commands(state: AvatarState, commands: Sequence[AvatarCommand]) -> AvatarState:
    """The state after ``commands``. Gestures, reactions and pointing are moments: they change
    nothing lasting, so they leave the state as it was."""
    changes: dict[str, object] = {}
    for command in commands:
        match command:
            case Mood(mood=mood):
                changes["mood"] = mood
            case Size(size=size):
                changes["size"] = size
            case Show():
                changes["visible"] = True
            case Hide():
                changes["visible"] = False
            case Wander():
                changes["motion"] = "wander"
            case Stop():
                changes["motion"] = "still"
            case Move(x=x, y=y, target=target):
                changes.update(x=x, y=y, motion="follow" if target == "follow" else "still")
    return msgspec.structs.replace(state, **changes) if changes else state


class _Bucket(Protocol):
    def take(self) -> int | None: ...


_sprite_decoder = msgspec.msgpack.Decoder(SpriteReply)
_sprite_encoder = msgspec.msgpack.Encoder()


class AvatarLink:
    """One connection's avatar. Nothing here runs per token: the relay calls :meth:`commands`
    only for tokens that carried a tag, and the rest once per reply or per request."""

    def __init__(
        self,
        settings: AvatarConfig,
        put: Callable[[object], None],
        *,
        capable: bool,
        session: str,
        cache: AvatarCache | None = None,
        sprite_bucket: _Bucket | None = None,
    ) -> None:
        self.settings = settings
        self.capable = capable  # the surface listed "avatar" in hello.capabilities
        self.session = session
        self.cache = cache
        self.state = AvatarState()
        self.busy = 0  # replies in flight on this connection
        self._put = put
        self._bucket = sprite_bucket

    # ------------------------------------------------------------------ replies

    def begin(self, chat_id: str) -> AvatarParser:
        """A reply starts: the avatar thinks; returns the reply's parser."""
        self.busy += 1
        if self.state.activity != "talking":
            self._set(msgspec.structs.replace(self.state, activity="thinking"), chat_id)
        s = self.settings
        return AvatarParser(s.prefix, s.max_commands_per_reply, s.hold_back_chars)

    def talking(self, chat_id: str) -> None:
        """The reply's first token arrived."""
        if self.state.activity != "talking":
            self._set(msgspec.structs.replace(self.state, activity="talking"), chat_id)

    def commands(self, chat_id: str, commands: Sequence[AvatarCommand]) -> None:
        """Commands the model wrote in reply ``chat_id``."""
        self._set(apply_commands(self.state, commands), chat_id, commands)

    def end(self, chat_id: str, *, failed: bool) -> None:
        """A reply ended: ``oops`` if it failed, else idle once no other reply is running."""
        self.busy -= 1
        if failed:
            activity = "oops"
        elif self.busy:
            return
        else:
            activity = "idle"
        self._set(msgspec.structs.replace(self.state, activity=activity), chat_id)

    def _set(self, state: AvatarState, chat_id: str | None, commands: Sequence[AvatarCommand] = ()) -> None:
        if state == self.state and not commands:
            return
        self.state = state
        if self.capable:
            self._put(Avatar(state, id=chat_id, commands=list(commands)))

    # ------------------------------------------------------------------ sprites

    def sprite(self, request: SpriteRequest) -> SpriteReply:
        """Answer a ``sprite`` request, from the cache when it can. Raises BadMessage or RateLimited."""
        if self._bucket is not None:
            retry_ms = self._bucket.take()
            if retry_ms is not None:
                per_minute = self.settings.sprite_requests_per_minute
                raise RateLimited(f"more than {per_minute} sprite requests a minute", retry_after_ms=retry_ms)
        mood = canonical_mood(request.mood)
        if mood is None:
            raise BadMessage(f"sprite.mood: unknown mood {request.mood!r}")
        size = canonical_size(request.size)
        if size is None:
            raise BadMessage(f"sprite.size: unknown size {request.size!r} (tiny, small, medium or large)")
        if not 0 <= request.variant <= MAX_VARIANT:
            raise BadMessage(f"sprite.variant: must be 0..{MAX_VARIANT}, got {request.variant}")
        key = sprite_key(mood, size, request.variant)
        base = request.variant == 0  # base sprites are shared and pinned; variants are per session
        session = None if base else self.session
        cache = self.cache
        if cache is not None:
            data = cache.get(key, session=session)
            if data is not None:
                try:
                    return _sprite_decoder.decode(data)
                except msgspec.DecodeError:
                    log.warning("avatar cache returned an undecodable entry for %s; regenerating", key)
        reply = render_sprite(mood, size, request.variant)
        if cache is not None:
            try:
                cache.put(key, _sprite_encoder.encode(reply), session=session, pinned=base)
            except ValueError as exc:  # too large for the budget: serve it uncached
                log.warning("not caching %s: %s", key, exc)
        return reply

    def close(self) -> None:
        """The connection ended: drop this session's cache namespace."""
        if self.cache is not None:
            self.cache.clear_session(self.session)

    def __repr__(self) -> str:
        return f"<AvatarLink session={self.session} capable={self.capable} busy={self.busy} {self.state!r}>"
