"""Protocol version 1: every message round-trips in both codecs, tags are a contract, bad input
is a BadMessage that says where, and errors.to_wire is the one map from exceptions to codes."""

from __future__ import annotations

import logging

import msgspec
import pytest

from conductor_core import errors
from conductor_core.errors import BadMessage, ErrorCode, to_wire
from conductor_core.protocol import (
    PROTOCOL_VERSION,
    SUPPORTED_VERSIONS,
    Cancel,
    Chat,
    ClientPing,
    ClientPong,
    Done,
    Error,
    Hello,
    HistoryMessage,
    HistoryReply,
    HistoryRequest,
    ModelInfo,
    ModelsReply,
    ModelsRequest,
    ServerPing,
    ServerPong,
    State,
    Stats,
    StatusReply,
    StatusRequest,
    Token,
    Welcome,
    decode_client,
    decode_server,
    encode,
)

CODECS = ["json", "msgpack"]

STATS = Stats("local", "llama3.2", 12.5, 7, 40.25, "stop", load_ms=3.0, attempts=2)

CLIENT_MESSAGES = [
    Hello(1),
    Hello(1, surface="tui", token="s3cret", capabilities=["state", "avatar"]),
    Chat("c1", "hi"),
    Chat("c2", "hi", conversation="work", model="m", options={"temperature": 0.2, "stop": ["\n"]}, system="be brief"),
    Cancel("c1"),
    ClientPing(),
    ClientPing(7),
    ClientPong(8),
    ModelsRequest(),
    StatusRequest(),
    HistoryRequest(),
    HistoryRequest("work"),
]

SERVER_MESSAGES = [
    Welcome("s1", 1, "0.1.0"),
    Welcome("s1", 1, "0.1.0", models=["a", "b"], default_model="a"),
    Token("c1", "Hel"),
    Token("c1", ""),
    Done("c1", Stats("b", "m", 0.0, 0, 0.0, "stop")),
    Done("c1", STATS),
    Error(ErrorCode.BAD_MESSAGE, "bad"),
    Error(ErrorCode.RATE_LIMITED, "slow down", retryable=True, id="c1", retry_after_ms=250),
    ServerPing(),
    ServerPing(3),
    ServerPong(4),
    ModelsReply([]),
    ModelsReply([ModelInfo("m", "local"), ModelInfo("n", "remote", loaded=True)]),
    StatusReply("0.1.0", 1.5, 2, 1, {"local": {"state": "up", "models": ["m"]}}, "priority", ["unix"]),
    HistoryReply("default", []),
    HistoryReply("default", [HistoryMessage("user", "hi"), HistoryMessage("assistant", "he", interrupted=True)]),
    State("c1", "waiting"),
    State("c1", "streaming"),
]


def _id(message) -> str:
    return type(message).__name__


# ---------------------------------------------------------------- round trips


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("message", CLIENT_MESSAGES, ids=_id)
def test_client_message_round_trips(message, codec):
    decoded = decode_client(encode(message, codec), codec)
    assert type(decoded) is type(message)
    assert decoded == message


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("message", SERVER_MESSAGES, ids=_id)
def test_server_message_round_trips(message, codec):
    decoded = decode_server(encode(message, codec), codec)
    assert type(decoded) is type(message)
    assert decoded == message


@pytest.mark.parametrize("message", CLIENT_MESSAGES + SERVER_MESSAGES, ids=_id)
def test_json_and_msgpack_carry_the_same_document(message):
    assert msgspec.json.decode(encode(message, "json")) == msgspec.msgpack.decode(encode(message, "msgpack"))


def test_default_codec_is_msgpack():
    assert encode(Cancel("x")) == encode(Cancel("x"), "msgpack")
    assert decode_client(encode(Cancel("x"))) == Cancel("x")
    assert decode_server(encode(Token("x", "t"))) == Token("x", "t")


# ---------------------------------------------------------------- literal wire forms


def test_literal_json_forms_omit_defaults():
    assert encode(Hello(1), "json") == b'{"type":"hello","protocol":1}'
    assert encode(Chat("c1", "hi"), "json") == b'{"type":"chat","id":"c1","content":"hi"}'
    assert encode(Token("c1", "x"), "json") == b'{"type":"token","id":"c1","text":"x"}'
    assert encode(Error(ErrorCode.INTERNAL, "m"), "json") == b'{"type":"error","code":"internal","message":"m"}'


def test_a_browser_can_write_messages_by_hand():
    assert decode_client(b'{"type": "hello", "protocol": 1}', "json") == Hello(1)
    assert decode_client(b'{"type":"chat","id":"a","content":"hi","model":"m"}', "json") == Chat("a", "hi", model="m")
    assert decode_client(b'{"type":"models"}', "json") == ModelsRequest()


def test_literal_msgpack_form():
    assert encode(ClientPing(1), "msgpack") == b"\x82\xa4type\xa4ping\xa3seq\x01"
    assert decode_client(b"\x82\xa4type\xa4ping\xa3seq\x01", "msgpack") == ClientPing(1)


def _tag(cls) -> str:
    return cls.__struct_config__.tag


def test_client_tags_are_the_documented_names():
    tags = [_tag(c) for c in (Hello, Chat, Cancel, ClientPing, ClientPong, ModelsRequest, StatusRequest, HistoryRequest)]
    assert tags == ["hello", "chat", "cancel", "ping", "pong", "models", "status", "history"]
    assert all(c.__struct_config__.tag_field == "type" for c in (Hello, Chat, Cancel))


def test_server_tags_are_the_documented_names():
    classes = (Welcome, Token, Done, Error, ServerPing, ServerPong, ModelsReply, StatusReply, HistoryReply, State)
    assert [_tag(c) for c in classes] == [
        "welcome", "token", "done", "error", "ping", "pong", "models", "status", "history", "state",
    ]  # fmt: skip


@pytest.mark.parametrize("message", CLIENT_MESSAGES + SERVER_MESSAGES, ids=_id)
def test_encoded_type_field_is_the_tag(message):
    assert msgspec.json.decode(encode(message, "json"))["type"] == _tag(type(message))


def test_ping_and_pong_mean_the_same_on_both_sides():
    assert decode_server(encode(ClientPing(5), "json"), "json") == ServerPing(5)
    assert decode_client(encode(ServerPong(5), "json"), "json") == ClientPong(5)


def test_protocol_version():
    assert PROTOCOL_VERSION == 1
    assert PROTOCOL_VERSION in SUPPORTED_VERSIONS


# ---------------------------------------------------------------- schema evolution


@pytest.mark.parametrize("codec", CODECS)
def test_unknown_fields_are_ignored(codec):
    doc = {"type": "chat", "id": "a", "content": "hi", "priority": 3, "attachments": [{"k": [1, 2]}]}
    data = msgspec.json.encode(doc) if codec == "json" else msgspec.msgpack.encode(doc)
    assert decode_client(data, codec) == Chat("a", "hi")


def test_unknown_fields_in_server_messages_are_ignored():
    data = b'{"type":"done","id":"a","stats":{"backend":"b","model":"m","ttft_ms":1,"tokens":2,'
    data += b'"tokens_per_s":3,"finish_reason":"stop","new_stat":9},"extra":true}'
    assert decode_server(data, "json") == Done("a", Stats("b", "m", 1.0, 2, 3.0, "stop"))


# ---------------------------------------------------------------- bad input


def _bad(data: bytes, codec: str = "json") -> str:
    with pytest.raises(BadMessage) as info:
        decode_client(data, codec)
    assert info.value.code is ErrorCode.BAD_MESSAGE
    assert isinstance(info.value.__cause__, msgspec.DecodeError | RecursionError)
    return str(info.value)


def test_wrong_type_names_the_field_path():
    assert "$.id" in _bad(b'{"type":"chat","id":1,"content":"x"}')
    assert "Expected `str`, got `int`" in _bad(b'{"type":"chat","id":1,"content":"x"}')


def test_wrong_type_in_a_list_names_the_index():
    assert "$.capabilities[1]" in _bad(b'{"type":"hello","protocol":1,"capabilities":["a",1]}')


def test_wrong_type_in_a_nested_mapping_names_the_field():
    message = _bad(msgspec.msgpack.encode({"type": "chat", "id": "1", "content": "x", "options": {1: 2}}), "msgpack")
    assert "$.options" in message


def test_bool_is_not_an_int():
    assert "$.protocol" in _bad(b'{"type":"hello","protocol":true}')


def test_missing_required_field_names_it():
    assert "`content`" in _bad(b'{"type":"chat","id":"1"}')
    assert "`protocol`" in _bad(b'{"type":"hello"}')
    assert "`id`" in _bad(msgspec.msgpack.encode({"type": "cancel"}), "msgpack")


def test_missing_type_names_it():
    assert "`type`" in _bad(b'{"id":"x"}')


def test_unknown_type_names_the_tag_field():
    message = _bad(b'{"type":"nope"}')
    assert "$.type" in message and "nope" in message


@pytest.mark.parametrize("tag", ["welcome", "token", "done", "error", "state", "Hello", "HELLO", ""])
def test_server_only_or_miscased_tags_are_refused_from_a_client(tag):
    assert "$.type" in _bad(msgspec.json.encode({"type": tag, "id": "x", "text": "t"}))


@pytest.mark.parametrize("data", [b"[]", b"1", b'"hello"', b"null"])
def test_non_object_is_refused(data):
    assert "Expected `object`" in _bad(data)


@pytest.mark.parametrize(
    "data, codec",
    [
        (b"", "json"),
        (b"", "msgpack"),
        (b"{", "json"),
        (b"\xff\xfe", "json"),
        (b'{"type":"ping"} trailing', "json"),
        (b"\xc1", "msgpack"),
        (b"\x82\xa4type", "msgpack"),
        (b'{"type":"hello","protocol":1}', "msgpack"),  # JSON sent to a msgpack peer
    ],
)
def test_garbage_bytes_are_a_bad_message(data, codec):
    assert _bad(data, codec)


@pytest.mark.parametrize("codec", CODECS)
def test_deeply_nested_payload_is_a_bad_message_not_a_crash(codec):
    depth = 100_000
    if codec == "json":
        data = b'{"type":"chat","id":"1","content":"x","options":' + b'{"a":' * depth + b"1" + b"}" * depth + b"}"
    else:
        head = msgspec.msgpack.encode({"type": "chat", "id": "1", "content": "x"})
        data = bytes([head[0] + 1]) + head[1:] + msgspec.msgpack.encode("options") + b"\x81\xa1a" * depth + b"\x01"
    assert "nest" in _bad(data, codec)


def test_decode_server_raises_decode_error():
    with pytest.raises(msgspec.DecodeError):
        decode_server(b'{"type":"hello","protocol":1}', "json")
    with pytest.raises(msgspec.ValidationError, match=r"\$\.code"):
        decode_server(b'{"type":"error","code":7,"message":"m"}', "json")


def test_client_decodes_error_codes_and_phases_a_newer_server_adds():
    """Forward compatibility: an unknown code or phase must not make a whole message undecodable."""
    error = decode_server(b'{"type":"error","code":"quota_exceeded","message":"m"}', "json")
    assert error.code == "quota_exceeded"
    state = decode_server(b'{"type":"state","id":"1","phase":"thinking_hard"}', "json")
    assert state.phase == "thinking_hard"


# ---------------------------------------------------------------- error codes and to_wire

REQUIRED_CODES = [
    "bad_message", "too_large", "unauthorized", "protocol_mismatch", "rate_limited", "unknown_model",
    "backend_unavailable", "backend_error", "cancelled", "overloaded", "shutting_down", "internal",
]  # fmt: skip


@pytest.mark.parametrize("code", REQUIRED_CODES)
def test_error_code_exists(code):
    assert ErrorCode(code) == code
    assert Error(ErrorCode(code), "m") == decode_server(encode(Error(code, "m"), "json"), "json")


def test_error_codes_are_unique_snake_case_strings():
    values = [c.value for c in ErrorCode]
    assert len(set(values)) == len(values)
    assert all(v.isidentifier() and v == v.lower() for v in values)


# (exception, code, retryable)
TO_WIRE = [
    (errors.BadMessage("m"), "bad_message", False),
    (errors.TooLarge("m"), "too_large", False),
    (errors.Unauthorized("m"), "unauthorized", False),
    (errors.ProtocolMismatch("m"), "protocol_mismatch", False),
    (errors.ProtocolViolation("m"), "bad_message", False),
    (errors.RateLimited("m", retry_after_ms=500), "rate_limited", True),
    (errors.Overloaded("m"), "overloaded", True),
    (errors.ClientTooSlow("m"), "overloaded", False),
    (errors.ShuttingDown("m"), "shutting_down", True),
    (errors.Cancelled("m"), "cancelled", False),
    (errors.UnknownModel("m"), "unknown_model", False),
    (errors.BackendError("m", backend="b"), "backend_error", False),
    (errors.BackendUnavailable("m", backend="b"), "backend_unavailable", True),
    (errors.BackendBadRequest("m"), "bad_request", False),
    (errors.BackendRateLimited("m", retry_after_ms=1000), "rate_limited", True),
    (errors.ModelNotFound("m", model="x"), "unknown_model", False),
    (errors.StreamFailed("m"), "backend_error", False),
    (errors.BackendTimeout("m"), "backend_error", False),
    (errors.ConductorError("m"), "internal", False),
]


@pytest.mark.parametrize("exc, code, retryable", TO_WIRE, ids=lambda v: type(v).__name__ if isinstance(v, Exception) else "")
def test_to_wire(exc, code, retryable):
    assert to_wire(exc) == (code, "m", retryable, exc.retry_after_ms)
    assert isinstance(to_wire(exc)[0], ErrorCode)


def test_every_conductor_error_class_is_covered_by_to_wire_table():
    def subclasses(cls):
        for sub in cls.__subclasses__():
            yield sub
            yield from subclasses(sub)

    listed = {type(exc) for exc, _, _ in TO_WIRE}
    public = {getattr(errors, n) for n in errors.__all__}
    assert {c for c in subclasses(errors.ConductorError) if c in public} <= listed


def test_retry_after_is_carried():
    assert to_wire(errors.RateLimited("slow", retry_after_ms=500))[3] == 500
    assert to_wire(errors.BackendRateLimited("slow", retry_after_ms=7))[3] == 7
    assert to_wire(errors.Overloaded("busy"))[3] is None


def test_backend_errors_carry_context():
    exc = errors.ModelNotFound("no such model", backend="local", model="x")
    assert (exc.backend, exc.model, exc.message) == ("local", "x", "no such model")


def test_stdlib_bases_keep_callers_except_clauses_working():
    assert isinstance(errors.BackendTimeout("t"), TimeoutError)
    assert issubclass(errors.ClientTooSlow, errors.Overloaded)
    assert issubclass(errors.TooLarge, errors.ProtocolViolation)
    assert errors.TooLarge.fatal and errors.Unauthorized.fatal and errors.ProtocolMismatch.fatal
    assert not errors.BadMessage.fatal


@pytest.mark.parametrize("exc", [RuntimeError("password=hunter2 at /home/me/.secrets"), KeyError("sk-123"), ValueError()])
def test_unknown_exception_is_internal_with_no_details(exc, caplog):
    with caplog.at_level(logging.ERROR, logger="conductor.errors"):
        code, message, retryable, retry_after = to_wire(exc)
    assert (code, retryable, retry_after) == (ErrorCode.INTERNAL, False, None)
    assert str(exc) not in message or not str(exc)
    assert "hunter2" not in message and "sk-123" not in message and type(exc).__name__ not in message
    # the details go to the log instead, with the traceback
    (record,) = [r for r in caplog.records if r.name == "conductor.errors"]
    assert record.exc_info[1] is exc


def test_to_wire_result_builds_an_error_message():
    code, message, retryable, retry_after = to_wire(errors.BackendUnavailable("down"))
    wire = encode(Error(code, message, retryable, id="c1", retry_after_ms=retry_after), "json")
    assert msgspec.json.decode(wire) == {
        "type": "error", "code": "backend_unavailable", "message": "down", "retryable": True, "id": "c1",
    }  # fmt: skip
