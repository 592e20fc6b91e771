"""Strip terminal control sequences from untrusted model text, incrementally.

A model's reply is untrusted input to the user's terminal: an ``ESC ] 52`` sequence can write the
clipboard, ``ESC [ 2 J`` clears the screen, an OSC 8 link hides where it points. ``conductor chat``
therefore prints only text, newlines and tabs. Because replies arrive token by token, a sequence
may be split across tokens (``"\\x1b["`` then ``"2J"``); :class:`TerminalSanitizer` keeps the parser
state between :meth:`~TerminalSanitizer.feed` calls so the split sequence is still removed.

What is removed (ECMA-48 shapes):

- ``ESC`` sequences: ``ESC`` + intermediates (0x20-0x2F) + one final byte (0x30-0x7E);
- CSI: ``ESC [`` or U+009B, parameters/intermediates (0x20-0x3F), one final byte (0x40-0x7E);
- strings: OSC (``ESC ]``, U+009D), DCS (``ESC P``, U+0090), SOS, PM, APC, up to BEL, ST
  (``ESC \\`` or U+009C) or, so that an unterminated string cannot swallow the whole reply,
  the next newline (which is kept);
- every other C0 control except ``\\n`` and ``\\t``, DEL, and every C1 control (U+0080-U+009F).

A malformed sequence ends at the first character that cannot belong to it, and that character
is then treated as ordinary text (so it is kept if printable, dropped if a control). The
invariant, checked with hypothesis: the output never contains ESC or any control except
``\\n``/``\\t``, and feeding any split of a text gives the same output as feeding it whole.
"""

from __future__ import annotations

import re

__all__ = ["TerminalSanitizer", "strip_controls"]

# Anything that needs the state machine: C0 (but \t \n), DEL, C1.
_UNSAFE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")

_TEXT, _ESC, _ESC_INTER, _CSI, _STRING, _STRING_ESC = range(6)
_STRING_INTRODUCERS = frozenset("]PX^_")  # after ESC: OSC, DCS, SOS, PM, APC
_C1_STRINGS = frozenset("\x90\x98\x9d\x9e\x9f")  # DCS, SOS, OSC, PM, APC


class TerminalSanitizer:
    """Stateful stripper: ``feed`` each piece as it arrives, print what it returns."""

    __slots__ = ("_state",)

    def __init__(self) -> None:
        self._state = _TEXT

    def feed(self, text: str) -> str:
        if self._state == _TEXT and not _UNSAFE.search(text):
            return text  # the common case: one regex scan, no copy
        out: list[str] = []
        state = self._state
        for ch in text:
            state = self._step(state, ch, out)
        self._state = state
        return "".join(out)

    def reset(self) -> None:
        """Forget a pending, unfinished sequence (call between replies)."""
        self._state = _TEXT

    @staticmethod
    def _text(ch: str, out: list[str]) -> int:
        o = ord(ch)
        if ch == "\x1b":
            return _ESC
        if o == 0x9B:
            return _CSI
        if ch in _C1_STRINGS:
            return _STRING
        if ch == "\n" or ch == "\t" or not (o < 0x20 or 0x7F <= o <= 0x9F):
            out.append(ch)
        return _TEXT

    def _step(self, state: int, ch: str, out: list[str]) -> int:
        o = ord(ch)
        if state == _TEXT:
            return self._text(ch, out)
        if state == _ESC:
            if ch == "[":
                return _CSI
            if ch in _STRING_INTRODUCERS:
                return _STRING
            if 0x20 <= o <= 0x2F:
                return _ESC_INTER
            if 0x30 <= o <= 0x7E:
                return _TEXT  # a complete two-character sequence
            return self._text(ch, out)  # not a sequence: reprocess as text
        if state == _ESC_INTER:
            if 0x20 <= o <= 0x2F:
                return _ESC_INTER
            if 0x30 <= o <= 0x7E:
                return _TEXT
            return self._text(ch, out)
        if state == _CSI:
            if 0x20 <= o <= 0x3F:
                return _CSI
            if 0x40 <= o <= 0x7E:
                return _TEXT
            return self._text(ch, out)
        if state == _STRING:
            if ch == "\x07" or o == 0x9C:
                return _TEXT
            if ch == "\x1b":
                return _STRING_ESC
            if ch == "\n":
                out.append(ch)
                return _TEXT
            return _STRING
        # _STRING_ESC: ESC \ is the string terminator; ESC + anything else starts a new sequence
        if ch == "\\":
            return _TEXT
        return self._step(_ESC, ch, out)


def strip_controls(text: str) -> str:
    """One-shot form of :class:`TerminalSanitizer` for a complete text."""
    return TerminalSanitizer().feed(text)
