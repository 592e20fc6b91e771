"""Sans-I/O length-prefix framing: literal bytes both ways, every split, limits, failure.

This module alone must cover conductor_core/framing.py at 100% of branches (websockets'
maxi_cov rule): ``python -m coverage run --branch --include='*/framing.py' -m pytest
tests/test_framing.py``.
"""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from conductor_core.errors import ErrorCode, TooLarge
from conductor_core.framing import HEADER_SIZE, FrameDecoder, encode_frame


def decode_all(data: bytes, max_size: int = 1 << 20) -> list[bytes]:
    decoder = FrameDecoder(max_size)
    decoder.receive_data(data)
    assert decoder.buffered == 0, "a complete stream leaves nothing buffered"
    return decoder.events_received()


def assert_frame_data(payload: bytes, data: bytes) -> None:
    """``data`` parses to exactly ``payload`` and ``payload`` serialises to exactly ``data``."""
    assert decode_all(data) == [payload]
    assert encode_frame(payload) == data


# ---------------------------------------------------------------- literal bytes, both ways


def test_header_size_is_four():
    assert HEADER_SIZE == 4


def test_empty_payload():
    assert_frame_data(b"", b"\x00\x00\x00\x00")


def test_short_payload():
    assert_frame_data(b"Spam", b"\x00\x00\x00\x04Spam")


def test_length_is_big_endian():
    assert_frame_data(b"x" * 0x0102, b"\x00\x00\x01\x02" + b"x" * 0x0102)


def test_length_uses_all_four_bytes():
    payload = bytes(0x010203)
    assert encode_frame(payload)[:4] == b"\x00\x01\x02\x03"
    assert decode_all(encode_frame(payload), max_size=len(payload)) == [payload]


def test_msgpack_payload_is_opaque():
    # a msgpack map {"type": "ping", "seq": 1}; framing must not look inside
    body = b"\x82\xa4type\xa4ping\xa3seq\x01"
    assert len(body) == 16
    assert_frame_data(body, b"\x00\x00\x00\x10" + body)


def test_encode_accepts_bytearray_and_memoryview():
    assert encode_frame(bytearray(b"ab")) == b"\x00\x00\x00\x02ab"
    assert encode_frame(memoryview(b"abc")) == b"\x00\x00\x00\x03abc"


def test_decoded_events_are_bytes_not_views_of_the_buffer():
    decoder = FrameDecoder()
    decoder.receive_data(b"\x00\x00\x00\x02hi\x00\x00")
    (event,) = decoder.events_received()
    assert type(event) is bytes
    decoder.receive_data(b"\x00\x02yo")
    assert event == b"hi"
    assert decoder.events_received() == [b"yo"]


# ---------------------------------------------------------------- several frames, any split

STREAM = [b"hello", b"", b"\x00\x00\x00\x01", b"x" * 300, b"end"]
WIRE = b"".join(encode_frame(p) for p in STREAM)


def test_many_frames_in_one_chunk():
    assert decode_all(WIRE) == STREAM


def test_many_zero_length_frames_in_one_chunk():
    assert decode_all(b"\x00\x00\x00\x00" * 1000) == [b""] * 1000


def test_one_byte_at_a_time():
    decoder = FrameDecoder()
    events = []
    for i in range(len(WIRE)):
        decoder.receive_data(WIRE[i : i + 1])
        events += decoder.events_received()
    assert events == STREAM
    assert decoder.buffered == 0


@pytest.mark.parametrize("cut", range(len(WIRE) + 1))
def test_every_two_way_split(cut):
    decoder = FrameDecoder()
    decoder.receive_data(WIRE[:cut])
    first = decoder.events_received()
    decoder.receive_data(WIRE[cut:])
    assert first + decoder.events_received() == STREAM
    assert decoder.buffered == 0


def test_every_three_way_split_of_a_small_stream():
    payloads = [b"ab", b"", b"c"]
    wire = b"".join(encode_frame(p) for p in payloads)
    for i, j in itertools.combinations_with_replacement(range(len(wire) + 1), 2):
        decoder = FrameDecoder()
        events = []
        for part in (wire[:i], wire[i:j], wire[j:]):
            decoder.receive_data(part)
            events += decoder.events_received()
        assert events == payloads, (i, j)


@given(
    payloads=st.lists(st.binary(max_size=40), max_size=8),
    cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=10),
)
def test_any_split_of_any_stream(payloads, cuts):
    wire = b"".join(encode_frame(p) for p in payloads)
    bounds = sorted({0, len(wire), *(c for c in cuts if c <= len(wire))})
    decoder = FrameDecoder(max_size=40)
    events = []
    for start, end in itertools.pairwise(bounds):
        decoder.receive_data(wire[start:end])
        events += decoder.events_received()
        # everything received is delivered, buffered, or a header already parsed
        assert end - sum(map(len, map(encode_frame, events))) - decoder.buffered in (0, HEADER_SIZE)
    assert events == payloads
    assert decoder.buffered == 0


def test_partial_frame_is_held_until_complete():
    decoder = FrameDecoder()
    decoder.receive_data(b"\x00\x00")
    assert decoder.events_received() == [] and decoder.buffered == 2
    decoder.receive_data(b"\x00\x05he")
    assert decoder.events_received() == [] and decoder.buffered == 2  # header consumed
    decoder.receive_data(b"llo\x00")
    assert decoder.events_received() == [b"hello"] and decoder.buffered == 1


def test_empty_data_is_a_no_op():
    decoder = FrameDecoder()
    decoder.receive_data(b"")
    assert decoder.events_received() == [] and decoder.buffered == 0


def test_events_received_drains():
    decoder = FrameDecoder()
    decoder.receive_data(encode_frame(b"a") + encode_frame(b"b"))
    assert decoder.events_received() == [b"a", b"b"]
    assert decoder.events_received() == []


# ---------------------------------------------------------------- the size limit


def test_default_max_size_is_one_mebibyte():
    assert FrameDecoder().max_size == 1 << 20


def test_frame_of_exactly_max_size_is_accepted():
    assert decode_all(encode_frame(b"z" * 10), max_size=10) == [b"z" * 10]


def test_zero_length_frame_with_zero_max_size():
    assert decode_all(b"\x00\x00\x00\x00", max_size=0) == [b""]


def test_one_byte_over_max_size_is_rejected():
    decoder = FrameDecoder(max_size=10)
    with pytest.raises(TooLarge) as info:
        decoder.receive_data(b"\x00\x00\x00\x0b")
    assert "11" in str(info.value) and "10" in str(info.value)
    assert info.value.code is ErrorCode.TOO_LARGE
    assert info.value.fatal is True


def test_huge_prefix_rejected_before_the_body_is_buffered():
    decoder = FrameDecoder(max_size=1024)
    with pytest.raises(TooLarge):
        decoder.receive_data(b"\xff\xff\xff\xff")
    assert decoder.buffered == 0


def test_huge_prefix_with_body_bytes_in_the_same_chunk_is_not_kept():
    decoder = FrameDecoder(max_size=1024)
    with pytest.raises(TooLarge):
        decoder.receive_data(b"\x7f\xff\xff\xff" + b"A" * 4096)
    assert decoder.buffered == 0


def test_huge_prefix_arriving_byte_by_byte_fails_on_the_fourth_byte():
    decoder = FrameDecoder(max_size=1024)
    for byte in b"\x10\x00\x00":
        decoder.receive_data(bytes([byte]))
    assert decoder.buffered == 3
    with pytest.raises(TooLarge):
        decoder.receive_data(b"\x00")
    assert decoder.buffered == 0


def test_frames_before_an_oversize_prefix_are_still_delivered():
    decoder = FrameDecoder(max_size=8)
    with pytest.raises(TooLarge):
        decoder.receive_data(encode_frame(b"ok") + encode_frame(b"") + b"\x00\x00\x00\x09" + b"123456789")
    assert decoder.events_received() == [b"ok", b""]
    assert decoder.buffered == 0


def test_failure_is_sticky():
    decoder = FrameDecoder(max_size=4)
    with pytest.raises(TooLarge):
        decoder.receive_data(b"\x00\x00\x00\x05")
    # a valid frame, or nothing at all, after the failure is refused too
    with pytest.raises(TooLarge):
        decoder.receive_data(encode_frame(b"ok"))
    with pytest.raises(TooLarge):
        decoder.receive_data(b"")
    assert decoder.events_received() == []
    assert decoder.buffered == 0


# ---------------------------------------------------------------- garbage


def test_http_request_on_a_framed_socket_is_rejected_at_once():
    # "GET " read as a length is 0x47455420 bytes: far over any sane limit
    decoder = FrameDecoder()
    with pytest.raises(TooLarge):
        decoder.receive_data(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert decoder.buffered == 0


def test_json_text_on_a_framed_socket_is_rejected_at_once():
    decoder = FrameDecoder()
    with pytest.raises(TooLarge):
        decoder.receive_data(b'{"type": "hello", "protocol": 1}')


@given(st.binary(max_size=200), st.integers(min_value=0, max_value=64))
def test_garbage_never_buffers_more_than_one_frame(data, max_size):
    decoder = FrameDecoder(max_size=max_size)
    try:
        decoder.receive_data(data)
    except TooLarge:
        assert decoder.buffered == 0
        events = decoder.events_received()
        assert b"".join(map(encode_frame, events)) == data[: sum(len(e) + HEADER_SIZE for e in events)]
        return
    events = decoder.events_received()
    assert all(len(e) <= max_size for e in events)
    assert decoder.buffered < HEADER_SIZE + max_size
    delivered = b"".join(map(encode_frame, events))
    assert data.startswith(delivered)
    assert len(data) - len(delivered) - decoder.buffered in (0, HEADER_SIZE)
