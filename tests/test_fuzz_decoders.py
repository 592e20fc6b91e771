"""A short fuzz run of every decoder of outside bytes (the long run: ``python -m reliability
fuzz --target all --examples 100000``; figures in docs/reliability.md). Each check asserts the
decoder's contract: only its documented error, a bounded buffer, the same result for every split
of the same bytes. The corpus (reliability/corpus/) is replayed first."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings

from conductor_core.errors import BadMessage
from conductor_core.protocol import decode_client
from reliability.fuzz import TARGETS, corpus, inputs, replay_corpus, splits

CI_EXAMPLES = 150
_ci = settings(max_examples=CI_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_fuzz_corpus_replays_clean(target):
    assert replay_corpus(target) >= 4, f"reliability/corpus/{target}/ should keep its interesting inputs"


def _fuzz_test(target: str):
    check = TARGETS[target]

    @_ci
    @given(data=inputs(target), cuts=splits())
    def test(data, cuts):
        check(data, cuts)

    test.__name__ = f"test_fuzz_{target}"
    return test


test_fuzz_avatar = _fuzz_test("avatar")
test_fuzz_config = _fuzz_test("config")
test_fuzz_frame = _fuzz_test("frame")
test_fuzz_http1 = _fuzz_test("http1")
test_fuzz_ndjson = _fuzz_test("ndjson")
test_fuzz_protocol = _fuzz_test("protocol")
test_fuzz_sse = _fuzz_test("sse")


@pytest.mark.parametrize("codec", ["json", "msgpack"])
def test_fuzz_invalid_utf8_string_is_a_bad_message_not_a_crash(codec):
    """Found by the fuzzer: msgspec raises UnicodeDecodeError (not DecodeError) for a string
    that is not UTF-8; it escaped decode_client and one frame took the whole daemon down."""
    data = b'{"type":"chat","id":"a","content":"\xff"}' if codec == "json" else b"\x83\xa4type\xa4chat\xa2id\xa1a\xa7content\xa1\xff"
    with pytest.raises(BadMessage, match="not valid UTF-8"):
        decode_client(data, codec)
    assert any(b"\xff" in item for item in corpus("protocol"))
