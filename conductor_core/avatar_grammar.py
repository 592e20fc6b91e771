"""The avatar's vocabulary: the commands a model may write, their typed form, and the state.

A tag's body (the text between ``[PREFIX:`` and ``]``) is parsed by :func:`parse_command` into one
of the command Structs below, or None when it is not a command we know. Model output is
untrusted: names come only from the tables here (aliases map to a canonical name), numbers are
clamped, and anything else is dropped. Everything here is pure data: no I/O, no kernel imports,
so :mod:`conductor_core.protocol` can carry these Structs on the wire.

Grammar (case-insensitive, words separated by spaces)::

    mood NAME | NAME                      NAME in MOODS or MOOD_ALIASES
    GESTURE [SECONDS] | gesture GESTURE   GESTURE in GESTURES; peek takes left|right|top|bottom
    react NAME | NAME                     NAME in REACTIONS
    move CORNER | move center | move follow | move X Y      (X, Y in percent, 0..100)
    size tiny|small|medium|large
    show | hide | wander | stop
    point X Y
"""

from __future__ import annotations

import math
import msgspec

__all__ = [
    "ACTIVITIES",
    "AvatarCommand",
    "AvatarState",
    "CORNERS",
    "GESTURES",
    "Gesture",
    "Hide",
    "MOODS",
    "MOOD_ALIASES",
    "Mood",
    "Move",
    "PEEK_DIRECTIONS",
    "Point",
    "REACTIONS",
    "React",
    "SIZES",
    "SIZE_ALIASES",
    "Show",
    "Size",
    "Stop",
    "Wander",
    "canonical_mood",
    "canonical_size",
    "parse_command",
]

MOODS = ("happy", "thinking", "playful", "shy", "excited", "confused", "calm", "curious")
MOOD_ALIASES = {
    "glad": "happy", "joyful": "happy", "cheerful": "happy", "pleased": "happy", "content": "happy",
    "think": "thinking", "thoughtful": "thinking", "pondering": "thinking", "pensive": "thinking",
    "silly": "playful", "cheeky": "playful", "mischievous": "playful", "goofy": "playful",
    "bashful": "shy", "timid": "shy", "embarrassed": "shy",
    "thrilled": "excited", "eager": "excited", "hyped": "excited", "enthusiastic": "excited",
    "puzzled": "confused", "perplexed": "confused", "unsure": "confused", "baffled": "confused",
    "relaxed": "calm", "neutral": "calm", "serene": "calm", "peaceful": "calm", "idle": "calm",
    "interested": "curious", "inquisitive": "curious", "intrigued": "curious", "wondering": "curious",
}  # fmt: skip

# gesture -> default duration in milliseconds
GESTURES = {
    "wave": 1500, "nod": 1000, "shake": 1000, "bounce": 1200, "spin": 1000, "dance": 3000,
    "swim": 2500, "stretch": 2000, "yawn": 2000, "wiggle": 1200, "peek": 2000,
}  # fmt: skip
PEEK_DIRECTIONS = ("left", "right", "top", "bottom")

# reaction -> default duration in milliseconds
REACTIONS = {
    "laugh": 1500, "gasp": 1000, "hmm": 1500, "tada": 1500, "oops": 1200, "love": 1500,
    "blush": 1500, "wink": 800, "cry": 2000, "angry": 1500, "sleepy": 2500, "dizzy": 1500,
}  # fmt: skip

SIZES = ("tiny", "small", "medium", "large")
SIZE_ALIASES = {"mini": "tiny", "little": "small", "normal": "medium", "big": "large", "huge": "large"}

# corner -> (x, y) in percent of the surface's drawing area (the avatar's centre)
CORNERS = {
    "top-left": (10.0, 10.0), "top-right": (90.0, 10.0),
    "bottom-left": (10.0, 90.0), "bottom-right": (90.0, 90.0), "center": (50.0, 50.0),
}  # fmt: skip
_CORNER_ALIASES = {"centre": "center", "middle": "center", "upper-left": "top-left", "upper-right": "top-right",
                   "lower-left": "bottom-left", "lower-right": "bottom-right"}  # fmt: skip

ACTIVITIES = ("idle", "thinking", "talking", "oops")

MIN_DURATION_MS, MAX_DURATION_MS = 200, 10_000


# ---------------------------------------------------------------- typed commands (tag field "cmd")


class _Cmd(msgspec.Struct, tag_field="cmd", frozen=True):  # every field explicit on the wire
    pass


class Mood(_Cmd, tag="mood"):
    """The lasting expression (a canonical name from MOODS)."""

    mood: str


class Gesture(_Cmd, tag="gesture"):
    """A one-off body animation; ``direction`` only for ``peek``."""

    name: str
    duration_ms: int
    direction: str | None = None


class React(_Cmd, tag="react"):
    """A one-off facial reaction or effect (hearts for ``love``, stars for ``dizzy``, …)."""

    name: str
    duration_ms: int


class Move(_Cmd, tag="move"):
    """Go to ``x``/``y`` percent (corners and ``center`` resolved to numbers), or follow the
    pointer (``follow``: then x and y are where to start)."""

    x: float
    y: float
    target: str = "xy"  # a CORNERS name, "follow" or "xy"


class Size(_Cmd, tag="size"):
    size: str


class Show(_Cmd, tag="show"):
    pass


class Hide(_Cmd, tag="hide"):
    pass


class Wander(_Cmd, tag="wander"):
    """Roam the drawing area on its own until ``stop`` or ``move``."""


class Stop(_Cmd, tag="stop"):
    """Stop wandering or following; stay where it is."""


class Point(_Cmd, tag="point"):
    """Point at ``x``/``y`` percent for a moment."""

    x: float
    y: float
    duration_ms: int = 1500


AvatarCommand = Mood | Gesture | React | Move | Size | Show | Hide | Wander | Stop | Point


class AvatarState(msgspec.Struct, frozen=True):
    """What a surface needs to draw the avatar now. Immutable: every change is a new object, so
    a snapshot queued for sending never changes under the writer."""

    mood: str = "calm"  # one of MOODS
    activity: str = "idle"  # one of ACTIVITIES (str so a newer server's activity decodes everywhere)
    size: str = "small"  # one of SIZES
    visible: bool = True
    motion: str = "still"  # still | wander | follow
    x: float = 90.0
    y: float = 90.0


# ---------------------------------------------------------------- parsing a tag body


def canonical_mood(name: str) -> str | None:
    name = name.strip().lower()
    return name if name in MOODS else MOOD_ALIASES.get(name)


def canonical_size(name: str) -> str | None:
    name = name.strip().lower()
    return name if name in SIZES else SIZE_ALIASES.get(name)


def _percent(word: str) -> float | None:
    try:
        value = float(word.removesuffix("%"))
    except ValueError:
        return None
    if math.isnan(value):
        return None
    return min(100.0, max(0.0, value))


def _duration(words: list[str], default: int) -> int | None:
    """An optional duration word: ``2``/``2s`` seconds or ``1500ms``; clamped. None if invalid."""
    if not words:
        return default
    if len(words) > 1:
        return None
    word = words[0]
    try:
        ms = float(word[:-2]) if word.endswith("ms") else float(word.removesuffix("s")) * 1000
    except ValueError:
        return None
    if math.isnan(ms):
        return None
    return int(min(MAX_DURATION_MS, max(MIN_DURATION_MS, ms)))


def _xy(words: list[str]) -> tuple[float, float] | None:
    if len(words) != 2:
        return None
    x, y = _percent(words[0]), _percent(words[1])
    return None if x is None or y is None else (x, y)


def parse_command(body: str) -> AvatarCommand | None:
    """The command a tag body names, or None if it is not one (the caller drops it)."""
    words = body.lower().replace(",", " ").split()
    if not words:
        return None
    verb, args = words[0], words[1:]
    if verb in ("gesture", "react") and args:  # the long forms: [yolla:gesture wave], [yolla:react laugh]
        table = GESTURES if verb == "gesture" else REACTIONS
        verb, args = args[0], args[1:]
        if verb not in table:
            return None
    if verb == "mood":
        mood = canonical_mood(args[0]) if len(args) == 1 else None
        return Mood(mood) if mood else None
    if verb == "peek":
        direction = args[0] if args and args[0] in PEEK_DIRECTIONS else None
        if direction is not None:
            args = args[1:]
        duration = _duration(args, GESTURES["peek"])
        return Gesture("peek", duration, direction or "right") if duration is not None else None
    if verb in GESTURES:
        duration = _duration(args, GESTURES[verb])
        return Gesture(verb, duration) if duration is not None else None
    if verb in REACTIONS:
        duration = _duration(args, REACTIONS[verb])
        return React(verb, duration) if duration is not None else None
    if verb == "move":
        return _move(args)
    if verb == "size":
        size = canonical_size(args[0]) if len(args) == 1 else None
        return Size(size) if size else None
    if verb == "point":
        xy = _xy(args)
        return Point(*xy) if xy else None
    if not args:
        if verb == "show":
            return Show()
        if verb == "hide":
            return Hide()
        if verb == "wander":
            return Wander()
        if verb == "stop":
            return Stop()
        mood = canonical_mood(verb)  # a bare mood: [yolla:happy]
        if mood:
            return Mood(mood)
    return None


def _move(args: list[str]) -> Move | None:
    if len(args) == 2 and args[0] in ("top", "bottom", "upper", "lower") and args[1] in ("left", "right"):
        args = [f"{args[0]}-{args[1]}"]  # "move top left"
    if len(args) == 1:
        where = _CORNER_ALIASES.get(args[0], args[0])
        if where in CORNERS:
            return Move(*CORNERS[where], target=where)
        if where == "follow":
            return Move(50.0, 50.0, target="follow")
        return None
    xy = _xy(args)
    return Move(*xy) if xy else None
