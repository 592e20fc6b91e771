"""conductor_core.termsafe: untrusted model text never reaches the terminal as control codes."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from conductor_core.termsafe import TerminalSanitizer, strip_controls

FORBIDDEN = {chr(c) for c in range(0x20) if chr(c) not in "\n\t"} | {chr(c) for c in range(0x7F, 0xA0)}

# Text biased towards the interesting characters: controls, sequence introducers and finals.
pieces = st.sampled_from(["\x1b", "[", "]", "P", "\\", "\x07", "\x9b", "\x9d", "\x9c", "\x90", "0", ";", "2", "J", "m", "\n", "\t", "\r", "a", "é", " ", "\x00", "\x7f"])
texts = st.lists(st.one_of(pieces, st.text(max_size=5)), max_size=40).map("".join)


@given(texts)
def test_output_never_contains_controls(text):
    assert not FORBIDDEN & set(strip_controls(text))


@given(texts, st.lists(st.integers(min_value=0, max_value=60), max_size=8))
def test_any_split_gives_the_same_output(text, cuts):
    whole = strip_controls(text)
    bounds = sorted({min(c, len(text)) for c in cuts})
    parts, start = [], 0
    for b in bounds + [len(text)]:
        parts.append(text[start:b])
        start = b
    s = TerminalSanitizer()
    assert "".join(s.feed(p) for p in parts) == whole


@given(st.text(alphabet=st.characters(blacklist_categories=("Cc",), blacklist_characters="\x1b")))
def test_plain_text_passes_unchanged(text):
    assert strip_controls(text) == text


def test_known_sequences():
    assert strip_controls("a\x1b[31mred\x1b[0m b") == "ared b"
    assert strip_controls("x\x1b]0;pwned title\x07y") == "xy"
    assert strip_controls("x\x1b]52;c;Zm9v\x1b\\y") == "xy"  # clipboard write, ST-terminated
    assert strip_controls("x\x1b]8;;http://evil\x1b\\link\x1b]8;;\x1b\\") == "xlink"
    assert strip_controls("clear\x1b[2J\x1b[H!") == "clear!"
    assert strip_controls("bell\x07 back\x08space\r\n\ttab") == "bell backspace\n\ttab"
    assert strip_controls("c1 \x9b31m csi") == "c1  csi"
    assert strip_controls("\x1b(Bcharset") == "charset"
    assert strip_controls("line\x1b]unterminated\nnext") == "line\nnext"


def test_sequence_split_across_tokens_is_stripped():
    s = TerminalSanitizer()
    out = [s.feed(t) for t in ["Hello ", "\x1b", "[", "3", "1m", "red", "\x1b]0;ti", "tle\x07", " done"]]
    assert "".join(out) == "Hello red done"
    assert out[0] == "Hello " and out[5] == "red", "text is never held back"
