"""The sans-I/O stream pieces: line splitting over arbitrary chunk boundaries, UTF-8 splits,
view-struct decoding and the nanosecond stats mapping."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conductor_core.backends import Finish
from conductor_ollama.stream import LineSplitter, LineTooLong, decode_line, finish_from, preview


def _split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    chunks, last = [], 0
    for p in points + [len(data)]:
        chunks.append(data[last:p])
        last = p
    return chunks


def _feed_all(chunks: list[bytes]) -> list[bytes]:
    splitter = LineSplitter()
    out = []
    for chunk in chunks:
        out.extend(splitter.feed(chunk))
    rest = splitter.flush()
    if rest:
        out.append(rest)
    return out


lines_strategy = st.lists(
    st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\n\r"), min_size=1).filter(lambda s: s.strip()),
    min_size=0,
    max_size=20,
)


@settings(max_examples=300, deadline=None)
@given(lines=lines_strategy, cuts=st.lists(st.integers(min_value=0, max_value=10_000), max_size=30), crlf=st.booleans())
def test_lines_survive_any_chunk_boundaries(lines, cuts, crlf):
    sep = "\r\n" if crlf else "\n"
    data = "".join(line + sep for line in lines).encode("utf-8")
    assert _feed_all(_split(data, cuts)) == [line.encode("utf-8") for line in lines]


@settings(max_examples=200, deadline=None)
@given(text=st.text(alphabet=st.characters(blacklist_categories=("Cs",)), min_size=1), cuts=st.lists(st.integers(min_value=0, max_value=4000), max_size=20))
def test_utf8_split_inside_a_character_decodes_whole(text, cuts):
    # ensure_ascii=False so multi-byte sequences really are on the wire
    line = json.dumps({"message": {"content": text}, "done": False}, ensure_ascii=False).encode("utf-8")
    out = _feed_all(_split(line + b"\n", cuts))
    assert len(out) == 1
    assert decode_line(out[0]).message.content == text


def test_every_split_of_a_multibyte_character():
    line = '{"message":{"content":"é😀中"},"done":false}\n'.encode("utf-8")
    for i in range(len(line) + 1):
        out = _feed_all([line[:i], line[i:]])
        assert decode_line(out[0]).message.content == "é😀中", i


def test_last_line_without_newline_is_flushed():
    splitter = LineSplitter()
    assert splitter.feed(b'{"a":1}\n{"done":true}') == [b'{"a":1}']
    assert splitter.flush() == b'{"done":true}'
    assert splitter.flush() == b""


def test_blank_lines_are_skipped():
    assert _feed_all([b"\n\r\n{}\n\n"]) == [b"{}"]


def test_line_too_long_is_refused():
    splitter = LineSplitter(max_line=10)
    with pytest.raises(LineTooLong):
        splitter.feed(b"x" * 11)
    splitter = LineSplitter(max_line=10)
    with pytest.raises(LineTooLong):
        splitter.feed(b"ok\n" + b"y" * 11)


def test_decoder_reads_only_used_fields_and_ignores_the_rest():
    line = decode_line(
        b'{"model":"llama3.2","created_at":"2023-08-04T08:52:19.385406455-07:00",'
        b'"message":{"role":"assistant","content":"The","images":null},"done":false,"extra":[1,2]}'
    )
    assert line.message.content == "The" and line.done is False and line.error is None


def test_stats_mapping_from_documented_final_line():
    # the final line of Ollama's docs/api.md "Chat request (streaming)" example
    final = decode_line(
        b'{"model":"llama3.2","created_at":"2023-08-04T19:22:45.499127Z","message":{"role":"assistant","content":""},'
        b'"done":true,"done_reason":"stop","total_duration":4883583458,"load_duration":1334875,'
        b'"prompt_eval_count":26,"prompt_eval_duration":342546000,"eval_count":282,"eval_duration":4535599000}'
    )
    finish = finish_from(final, "fallback")
    assert finish == Finish(
        model="llama3.2",
        finish_reason="stop",
        completion_tokens=282,
        prompt_tokens=26,
        generation_s=4.535599,
        load_s=0.001334875,
    )
    assert round(finish.completion_tokens / finish.generation_s, 2) == 62.17  # tokens/s as Ollama computes it


def test_stats_mapping_without_metrics():
    finish = finish_from(decode_line(b'{"done":true}'), "llama3.2")
    assert finish == Finish(model="llama3.2", finish_reason="stop")
    assert finish_from(decode_line(b'{"done":true,"done_reason":"length"}'), "m").finish_reason == "length"


def test_preview_truncates():
    assert preview(b"a" * 500).endswith("…")
    assert len(preview(b"a" * 500)) == 201
    assert preview(b"\xff\xfeok") == "\ufffd\ufffdok"
