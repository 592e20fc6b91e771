"""The sans-I/O SSE parser: every split of a stream gives the same events, line endings of
every kind, comments, multi-line data, and the chunk views."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from conductor_openai_compat.sse import SSEError, SSEEvent, SSEParser, chunk_decoder

STREAM = (
    b": keep-alive comment\n"
    b'data: {"choices":[{"delta":{"role":"assistant","content":null}}]}\n\n'
    b'data: {"choices":[{"delta":{"content":"Hel"}}]}\r\n\r\n'
    b"event: ping\ndata: x\n\n"
    b'data: {"choices":[{"delta":{"content":"lo"}}]}\r\r'
    b"id: 7\ndata: line one\ndata: line two\n\n"
    b"data: [DONE]\n\n"
)
EXPECTED = [
    SSEEvent(b'{"choices":[{"delta":{"role":"assistant","content":null}}]}'),
    SSEEvent(b'{"choices":[{"delta":{"content":"Hel"}}]}'),
    SSEEvent(b"x", "ping"),
    SSEEvent(b'{"choices":[{"delta":{"content":"lo"}}]}'),
    SSEEvent(b"line one\nline two", "message", "7"),
    SSEEvent(b"[DONE]", "message", "7"),  # the last event id persists (WHATWG)
]


def feed_all(parts: list[bytes]) -> list[SSEEvent]:
    parser = SSEParser()
    out: list[SSEEvent] = []
    for part in parts:
        out.extend(parser.feed(part))
    assert parser.close() is None
    return out


def test_whole_stream_at_once():
    assert feed_all([STREAM]) == EXPECTED


def test_every_two_way_split():
    for cut in range(len(STREAM) + 1):
        assert feed_all([STREAM[:cut], STREAM[cut:]]) == EXPECTED, cut


def test_one_byte_at_a_time():
    assert feed_all([STREAM[i : i + 1] for i in range(len(STREAM))]) == EXPECTED


@given(st.lists(st.integers(min_value=0, max_value=len(STREAM)), max_size=12))
def test_any_split(cuts):
    points = sorted(set(cuts))
    parts = [STREAM[a:b] for a, b in zip([0, *points], [*points, len(STREAM)])]
    assert feed_all(parts) == EXPECTED


def test_event_is_returned_as_soon_as_its_blank_line_arrives():
    parser = SSEParser()
    assert parser.feed(b'data: {"a":1}\n') == []
    assert parser.feed(b"\n") == [SSEEvent(b'{"a":1}')]


def test_crlf_split_across_chunks_is_one_line_ending():
    parser = SSEParser()
    assert parser.feed(b"data: a\r") == []
    # the "\n" completing "\r\n" must not count as the blank line that dispatches
    assert parser.feed(b"\n") == []
    assert parser.feed(b"\r\n") == [SSEEvent(b"a")]


def test_bom_dropped_even_when_split():
    parser = SSEParser()
    assert parser.feed(b"\xef\xbb") == []
    assert parser.feed(b"\xbfdata: a\n\n") == [SSEEvent(b"a")]


def test_field_without_space_and_unknown_fields():
    assert feed_all([b"data:a\nretry: 10\nfoo: bar\n\n"]) == [SSEEvent(b"a")]


def test_close_returns_an_event_missing_its_blank_line():
    parser = SSEParser()
    assert parser.feed(b"data: [DONE]") == []
    assert parser.close() == SSEEvent(b"[DONE]")


def test_overlong_line_is_an_error():
    parser = SSEParser(max_line_bytes=16)
    with pytest.raises(SSEError, match="longer than 16 bytes"):
        parser.feed(b"data: " + b"x" * 32)


def test_chunk_view_decodes_only_what_is_used():
    chunk = chunk_decoder.decode(
        b'{"id":"c","object":"chat.completion.chunk","created":1,"model":"m","system_fingerprint":"x",'
        b'"choices":[{"index":0,"delta":{"content":"hi","extra":1},"logprobs":null,"finish_reason":"stop"}],'
        b'"usage":{"prompt_tokens":3,"completion_tokens":1,"total_tokens":4},"timings":{"predicted_ms":12.5}}'
    )
    assert chunk.model == "m"
    assert chunk.choices[0].delta.content == "hi"
    assert chunk.choices[0].finish_reason == "stop"
    assert (chunk.usage.prompt_tokens, chunk.usage.completion_tokens) == (3, 1)
    assert chunk.timings.predicted_ms == 12.5
