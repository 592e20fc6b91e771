"""OpenAICompatBackend against httpx.MockTransport: SSE bodies as lists of byte chunks, errors
by status, request shape, secrets, and that closing the iterator closes the response."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator

import anyio
import httpx
import msgspec
import pytest
from conductor_core.backends import ChatRequest, Finish, Message, Timeouts
from conductor_core.errors import (
    BackendBadRequest,
    BackendError,
    BackendRateLimited,
    BackendTimeout,
    BackendUnavailable,
    ModelNotFound,
    StreamFailed,
)

from conductor_openai_compat.backend import OpenAICompatBackend, build_body
from conductor_openai_compat.errors import retry_after_ms
from conductor_openai_compat.plugin import OpenAIConfig, make_backend

ROLE = b'data: {"choices":[{"index":0,"delta":{"role":"assistant","content":null},"finish_reason":null}],"model":"m1"}\n\n'


def tok(text: str) -> bytes:
    return b"data: " + json.dumps({"choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}]}).encode() + b"\n\n"


FIN = b'data: {"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\n'
USAGE = (b'data: {"choices":[],"model":"m1","usage":{"prompt_tokens":5,"completion_tokens":2,"total_tokens":7},'
         b'"timings":{"predicted_ms":40.0}}\n\n')
DONE = b"data: [DONE]\n\n"


class ChunkStream(httpx.AsyncByteStream):
    """A response body delivered as the given chunks; records whether it was closed."""

    def __init__(self, chunks: list[bytes], gate: anyio.Event | None = None, after: int = 0) -> None:
        self.chunks = chunks
        self.gate = gate
        self.after = after
        self.closed = anyio.Event()
        self.sent = 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for chunk in self.chunks:
            if self.gate is not None and self.sent == self.after:
                await self.gate.wait()
            self.sent += 1
            yield chunk

    async def aclose(self) -> None:
        self.closed.set()


class Server:
    """A scripted handler: one response per request, recording requests."""

    def __init__(self, *responses: httpx.Response) -> None:
        self.responses = list(responses)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return self.responses.pop(0)

    def body(self, i: int = -1) -> dict:
        return json.loads(self.requests[i].content)


def sse(*chunks: bytes, stream: ChunkStream | None = None) -> httpx.Response:
    return httpx.Response(200, headers={"content-type": "text/event-stream"}, stream=stream or ChunkStream(list(chunks)))


def backend(server: Server, **kw) -> OpenAICompatBackend:
    kw.setdefault("default_model", "m1")
    return OpenAICompatBackend("oa", base_url="http://llm.test/v1", transport=httpx.MockTransport(server), **kw)


REQ = ChatRequest(messages=[Message("user", "hi")])


async def collect(b: OpenAICompatBackend, req: ChatRequest = REQ) -> list[str | Finish]:
    out = []
    async for item in b.chat(req):
        out.append(item)
    return out


async def test_streams_text_skips_role_only_chunk_and_reports_usage():
    server = Server(sse(ROLE, tok("Hel"), tok("lo"), FIN, USAGE, DONE))
    b = backend(server)
    out = await collect(b)
    assert out[:-1] == ["Hel", "lo"]  # the role-only chunk gave no (empty) text
    fin = out[-1]
    assert fin == Finish(model="m1", finish_reason="stop", completion_tokens=2, prompt_tokens=5, generation_s=0.04)
    await b.aclose()


async def test_chunks_split_anywhere_give_the_same_reply():
    whole = ROLE + tok("a") + tok("β") + tok("c") + FIN + USAGE + DONE
    for size in (1, 2, 3, 7, 64):
        parts = [whole[i : i + size] for i in range(0, len(whole), size)]
        b = backend(Server(sse(*parts)))
        out = await collect(b)
        assert "".join(x for x in out if isinstance(x, str)) == "aβc", size
        assert out[-1].completion_tokens == 2
        await b.aclose()


async def test_each_token_is_yielded_before_the_next_chunk_arrives():
    gate = anyio.Event()
    stream = ChunkStream([ROLE, tok("first"), tok("second"), FIN, DONE], gate=gate, after=2)
    b = backend(Server(sse(stream=stream)))
    it = b.chat(REQ)
    assert await it.__anext__() == "first"  # arrives while the server still holds back the rest
    assert stream.sent == 2
    gate.set()
    rest = [x async for x in it]
    assert rest[0] == "second" and isinstance(rest[-1], Finish)
    await b.aclose()


async def test_request_body_streams_with_usage_and_maps_options():
    server = Server(sse(FIN, DONE))
    b = backend(server, extra_body={"top_k": 20})
    req = ChatRequest(
        messages=[Message("system", "be brief"), Message("user", "hi")],
        model="other",
        options={"temperature": 0.2, "num_predict": 16, "top_p": 0.9, "stop": "\n", "seed": 7,
                 "num_ctx": 4096, "response_format": {"type": "json_object"}},
    )
    await collect(b, req)
    body = server.body()
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert body["model"] == "other"
    assert body["messages"] == [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    assert (body["temperature"], body["max_tokens"], body["top_p"], body["stop"], body["seed"]) == (0.2, 16, 0.9, ["\n"], 7)
    assert body["response_format"] == {"type": "json_object"}
    assert body["top_k"] == 20
    assert "num_ctx" not in body  # an Ollama-only option is not sent to an OpenAI server
    assert server.requests[0].url == "http://llm.test/v1/chat/completions"
    await b.aclose()


def test_format_becomes_response_format():
    schema = {"type": "object"}
    assert build_body(ChatRequest([Message("user", "x")], format="json"), "m")["response_format"] == {"type": "json_object"}
    assert build_body(ChatRequest([Message("user", "x")], format=schema), "m")["response_format"]["json_schema"]["schema"] == schema


async def test_bad_format_is_a_typed_bad_request():
    b = backend(Server())
    with pytest.raises(BackendBadRequest, match="format must be"):
        await collect(b, ChatRequest([Message("user", "x")], format="yaml"))


async def test_no_default_model_uses_the_first_listed():
    server = Server(httpx.Response(200, json={"object": "list", "data": [{"id": "alpha"}, {"id": "beta"}]}), sse(FIN, DONE))
    b = backend(server, default_model=None)
    await collect(b)
    assert server.body()["model"] == "alpha"
    assert server.requests[0].url.path == "/v1/models"


async def test_missing_done_and_finish_reason_is_stream_failed():
    b = backend(Server(sse(ROLE, tok("cut"))))
    out = []
    with pytest.raises(StreamFailed, match=r"without \[DONE\] or a finish_reason"):
        async for item in b.chat(REQ):
            out.append(item)
    assert out == ["cut"]  # the text before the cut was still delivered


async def test_finish_reason_without_done_is_accepted():
    out = await collect(backend(Server(sse(tok("x"), b'data: {"choices":[{"delta":{},"finish_reason":"length"}]}\n\n'))))
    assert out[-1].finish_reason == "length"


async def test_done_without_final_blank_line_is_accepted():
    out = await collect(backend(Server(sse(tok("x"), FIN, b"data: [DONE]"))))
    assert out == ["x", Finish(model="m1", finish_reason="stop")]


async def test_malformed_event_is_stream_failed_naming_it():
    b = backend(Server(sse(tok("a"), b"data: {not json\n\n", DONE)))
    with pytest.raises(StreamFailed, match=r"malformed event.*\{not json"):
        await collect(b)


async def test_error_event_mid_stream_is_stream_failed_with_its_message():
    err = b'data: {"error":{"message":"CUDA out of memory","type":"server_error"}}\n\n'
    with pytest.raises(StreamFailed, match="CUDA out of memory"):
        await collect(backend(Server(sse(tok("a"), err))))
    with pytest.raises(StreamFailed, match="boom"):
        await collect(backend(Server(sse(tok("a"), b"event: error\ndata: boom\n\n"))))


def err(status: int, message: str = "nope", *, code=None, headers=None) -> httpx.Response:
    return httpx.Response(status, headers=headers, json={"error": {"message": message, "type": "x", "code": code}})


@pytest.mark.parametrize(
    ("response", "exc", "text"),
    [
        (err(400, "messages: too short"), BackendBadRequest, "messages: too short"),
        (err(422, "bad field"), BackendBadRequest, "bad field"),
        (err(401, "Invalid API Key"), BackendError, "not authorised.*api_key_env"),
        (err(403, "forbidden"), BackendError, "not authorised"),
        (err(404, "The model `zz` does not exist", code="model_not_found"), ModelNotFound, "zz"),
        (httpx.Response(404, text="404 page not found"), BackendUnavailable, r"endpoint not found.*\.\.\./v1"),
        (err(429, "slow down", headers={"Retry-After": "3"}), BackendRateLimited, r"retry after 3 s.*slow down"),
        (err(500, "kaput"), BackendError, "server error: kaput"),
        (err(502, "bad gateway"), BackendUnavailable, "bad gateway"),
        (err(503, "Loading model"), BackendUnavailable, "Loading model"),
        (err(504, "gateway timeout"), BackendTimeout, "timed out"),
        (httpx.Response(400, json={"error": "plain string"}), BackendBadRequest, "plain string"),
        (httpx.Response(400, json={"detail": "fastapi style"}), BackendBadRequest, "fastapi style"),
    ],
)
async def test_error_statuses_map_to_typed_errors(response, exc, text):
    with pytest.raises(exc, match=text) as info:
        await collect(backend(Server(response)))
    assert type(info.value) is exc
    assert info.value.backend == "oa"


async def test_429_carries_retry_after_ms():
    with pytest.raises(BackendRateLimited) as info:
        await collect(backend(Server(err(429, headers={"Retry-After": "2"}))))
    assert info.value.retry_after_ms == 2000 and info.value.retryable
    with pytest.raises(BackendRateLimited) as info:
        await collect(backend(Server(err(429, headers={"retry-after-ms": "150"}))))
    assert info.value.retry_after_ms == 150


def test_retry_after_http_date():
    assert retry_after_ms({"retry-after": "Wed, 21 Oct 2015 07:28:10 GMT"}, now=1445412480.0) == 10_000
    assert retry_after_ms({"retry-after": "soon"}) is None
    assert retry_after_ms({}) is None


async def test_transport_errors_are_typed():
    def refuse(request):
        raise httpx.ConnectError("connection refused")

    b = OpenAICompatBackend("oa", base_url="http://llm.test/v1", default_model="m", transport=httpx.MockTransport(refuse))
    with pytest.raises(BackendUnavailable, match="cannot connect"):
        await collect(b)

    def slow(request):
        raise httpx.ReadTimeout("timed out")

    b = OpenAICompatBackend("oa", base_url="http://llm.test/v1", default_model="m", transport=httpx.MockTransport(slow),
                            timeouts=Timeouts(between_chunks=7))
    with pytest.raises(BackendTimeout, match="no data for 7 s"):
        await collect(b)


async def test_closing_the_iterator_closes_the_response():
    gate = anyio.Event()  # never set: the server would stream forever
    stream = ChunkStream([ROLE, tok("a"), tok("b")], gate=gate, after=2)
    b = backend(Server(sse(stream=stream)))
    it = b.chat(REQ)
    assert await it.__anext__() == "a"
    await it.aclose()
    assert stream.closed.is_set()
    await b.aclose()


async def test_cancelling_the_consumer_closes_the_response():
    gate = anyio.Event()
    stream = ChunkStream([ROLE, tok("a"), tok("b")], gate=gate, after=2)
    b = backend(Server(sse(stream=stream)))
    got = anyio.Event()
    async with anyio.create_task_group() as tg:
        async def consume():
            async for _ in b.chat(REQ):
                got.set()
        tg.start_soon(consume)
        await got.wait()
        tg.cancel_scope.cancel()
    assert stream.closed.is_set()


async def test_models_and_health():
    server = Server(
        httpx.Response(200, json={"data": [{"id": "a"}, {"id": "b"}]}),
        httpx.Response(200, json={"data": []}),
        err(503, "Loading model"),
        err(401, "Invalid API Key"),
    )
    b = backend(server)
    assert await b.models() == ["a", "b"]
    assert (await b.health()).state == "up"
    h = await b.health()
    assert (h.state, h.detail) == ("starting", "Loading model")
    h = await b.health()
    assert h.state == "down" and "401" in h.detail


async def test_health_uses_health_url_and_reports_down_when_unreachable():
    def handler(request):
        if request.url.path == "/health":
            raise httpx.ConnectError("refused")
        raise AssertionError(request.url)

    b = OpenAICompatBackend("oa", base_url="http://llm.test/v1", health_url="http://llm.test/health",
                            transport=httpx.MockTransport(handler))
    h = await b.health()
    assert h.state == "down" and "cannot connect" in h.detail


async def test_api_key_is_sent_as_bearer_but_never_shown(caplog, monkeypatch):
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("MY_KEY", "sk-secret-123")
    config = msgspec.convert({"base_url": "http://llm.test/v1", "api_key_env": "MY_KEY",
                              "headers": {"X-Org": "o1"}, "default_model": "m"}, OpenAIConfig)
    b = make_backend("oa", config)
    server = Server(sse(FIN, DONE), err(401, "Invalid API Key"))
    b._transport = httpx.MockTransport(server)
    await collect(b)
    sent = server.requests[0].headers
    assert sent["authorization"] == "Bearer sk-secret-123" and sent["x-org"] == "o1"
    with pytest.raises(BackendError) as info:
        await collect(b)
    inline = msgspec.convert({"base_url": "http://x/v1", "api_key": "sk-inline-456"}, OpenAIConfig)
    shown = " ".join([repr(b), str(b), str(info.value), repr(inline), caplog.text])
    assert "sk-secret-123" not in shown and "sk-inline-456" not in shown
    assert "***" in repr(b) and "***" in repr(inline)
    await b.aclose()


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"base_url": "ftp://x"}, "base_url must start with http"),
        ({"base_url": "http://x/v1", "api_key": "a", "api_key_env": "B"}, "not both"),
        ({"base_url": "http://x/v1", "max_connections": 0}, "at least 1"),
        ({"base_url": "http://x/v1", "timeout": 3}, "unknown field"),
    ],
)
def test_config_rejects_bad_tables(table, message):
    with pytest.raises((msgspec.ValidationError, ValueError), match=message):
        msgspec.convert(table, OpenAIConfig)


async def test_closed_backend_is_unavailable():
    b = backend(Server())
    await b.aclose()
    with pytest.raises(BackendUnavailable, match="closed"):
        await collect(b)


async def test_a_connection_dropped_before_any_answer_is_retried_once():
    calls = []

    def flaky(request):
        calls.append(request)
        if len(calls) == 1:  # a pooled connection the server had just closed
            raise httpx.RemoteProtocolError("Server disconnected without sending a response.")
        return sse(tok("ok"), FIN, DONE)

    b = OpenAICompatBackend("oa", base_url="http://llm.test/v1", default_model="m", transport=httpx.MockTransport(flaky))
    out = await collect(b)
    assert out[0] == "ok" and len(calls) == 2
    assert calls[0].content == calls[1].content  # the same body was sent again

    def dead(request):
        calls.append(request)
        raise httpx.RemoteProtocolError("Server disconnected without sending a response.")

    calls.clear()
    b = OpenAICompatBackend("oa", base_url="http://llm.test/v1", default_model="m", transport=httpx.MockTransport(dead))
    with pytest.raises(BackendUnavailable, match="closed the connection"):
        await collect(b)
    assert len(calls) == 2  # once, not forever


async def test_unknown_options_pass_through_only_when_enabled():
    req = ChatRequest([Message("user", "x")], options={"top_k": 5, "ignore_eos": True, "temperature": 0.1})
    server = Server(sse(FIN, DONE), sse(FIN, DONE))
    await collect(backend(server), req)
    assert "top_k" not in server.body() and server.body()["temperature"] == 0.1
    await collect(backend(server, pass_unknown_options=True), req)
    assert server.body()["top_k"] == 5 and server.body()["ignore_eos"] is True


def test_api_key_env_that_is_unset_is_reported(caplog, monkeypatch):
    monkeypatch.delenv("NO_SUCH_KEY_VAR", raising=False)
    config = msgspec.convert({"base_url": "http://x/v1", "api_key_env": "NO_SUCH_KEY_VAR"}, OpenAIConfig)
    b = make_backend("remote", config)
    assert "not set" in caplog.text and "NO_SUCH_KEY_VAR" in caplog.text
    assert "api_key=none" in repr(b)
