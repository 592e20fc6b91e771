"""Every failure form, end to end over real HTTP against the emulator: HTTP status errors
before the stream, an error line inside a 200 stream, a cut connection, a stream without its
done line, a malformed line, refused connections and the between-chunks timeout. Only the
conductor's typed errors may come out, each with a message a user can act on."""

from __future__ import annotations

import pytest

from conductor_core.backends import ChatRequest, Message, Timeouts
from conductor_core.errors import (
    BackendBadRequest,
    BackendError,
    BackendRateLimited,
    BackendTimeout,
    BackendUnavailable,
    ErrorCode,
    ModelNotFound,
    StreamFailed,
)
from conductor_core.testing.ollama_emulator import Fault
from conductor_ollama.backend import OllamaBackend
from conductor_ollama.plugin import OllamaConfig


def ask(model="llama3.2"):
    return ChatRequest(messages=[Message(role="user", content="hello there")], model=model)


async def drain(backend, request=None):
    pieces = []
    async for item in backend.chat(request or ask()):
        if isinstance(item, str):
            pieces.append(item)
    return pieces


async def test_unknown_model_is_model_not_found_with_pull_hint(backend):
    with pytest.raises(ModelNotFound) as info:
        await drain(backend, ask("mistral"))
    err = info.value
    assert err.code is ErrorCode.UNKNOWN_MODEL
    assert 'model "mistral" not found, try pulling it first' in err.message
    assert "ollama pull mistral" in err.message
    assert err.backend == "test" and err.model == "mistral"


@pytest.mark.parametrize(
    ("status", "exc_type", "code", "retryable", "fragment"),
    [
        (400, BackendBadRequest, ErrorCode.BAD_REQUEST, False, "invalid request"),
        (404, ModelNotFound, ErrorCode.UNKNOWN_MODEL, False, "ollama pull llama3.2"),
        (429, BackendRateLimited, ErrorCode.RATE_LIMITED, True, "too many requests"),
        (500, BackendError, ErrorCode.BACKEND_ERROR, False, "an unexpected error occurred"),
        (503, BackendUnavailable, ErrorCode.BACKEND_UNAVAILABLE, True, "maximum pending requests exceeded"),
    ],
)
async def test_http_errors_before_the_stream(backend, emulator, status, exc_type, code, retryable, fragment):
    emulator.faults.append(Fault(status=status))
    with pytest.raises(exc_type) as info:
        await drain(backend)
    assert type(info.value) is exc_type
    assert info.value.code is code and info.value.retryable is retryable
    assert fragment in info.value.message


async def test_bad_request_carries_ollamas_message(backend, emulator):
    emulator.faults.append(Fault(status=400, message='invalid format: expected "json" or a JSON schema'))
    with pytest.raises(BackendBadRequest, match='expected "json" or a JSON schema'):
        await drain(backend)


async def test_error_line_inside_the_stream_keeps_partial_text(backend, emulator):
    emulator.faults.append(Fault(error_after=2, message="model runner has unexpectedly stopped"))
    pieces = []
    with pytest.raises(StreamFailed) as info:
        async for item in backend.chat(ask()):
            pieces.append(item)
    assert pieces == ["Emulated", " reply"]  # the partial text reached the consumer
    assert "model runner has unexpectedly stopped" in info.value.message
    assert info.value.code is ErrorCode.BACKEND_ERROR


async def test_connection_cut_mid_stream_is_stream_failed(backend, emulator):
    emulator.faults.append(Fault(die_after=3))
    pieces = []
    with pytest.raises(StreamFailed) as info:
        async for item in backend.chat(ask()):
            pieces.append(item)
    assert len(pieces) == 3
    assert "broke" in info.value.message


async def test_stream_without_done_line_is_an_error_not_a_success(backend, emulator):
    emulator.faults.append(Fault(no_done=True))
    with pytest.raises(StreamFailed, match="without its final \\(done\\) line after 5 pieces"):
        await drain(backend)


async def test_malformed_line_is_reported_with_the_line(backend, emulator):
    emulator.faults.append(Fault(garbage_after=1))
    with pytest.raises(StreamFailed) as info:
        await drain(backend)
    assert "malformed line" in info.value.message
    assert '{"model": "oops", this is not json' in info.value.message


async def test_connection_refused_is_unavailable_with_url_hint(free_port):
    backend = OllamaBackend("down", OllamaConfig(url=f"http://127.0.0.1:{free_port}"))
    try:
        with pytest.raises(BackendUnavailable) as info:
            await drain(backend)
        url = f"http://127.0.0.1:{free_port}"
        assert f"is `ollama serve` running at {url}?" in info.value.message
        assert info.value.retryable
        with pytest.raises(BackendUnavailable):
            await backend.models()
        with pytest.raises(BackendUnavailable):
            await backend.load("llama3.2")
        health = await backend.health()
        assert health.state == "down" and url in health.detail
    finally:
        await backend.aclose()


async def test_dns_failure_is_unavailable():
    backend = OllamaBackend("dns", OllamaConfig(url="http://no-such-host.invalid:11434"))
    try:
        with pytest.raises(BackendUnavailable, match="no-such-host.invalid"):
            await drain(backend)
    finally:
        await backend.aclose()


async def test_silence_longer_than_between_chunks_is_a_timeout(emulator, running):
    backend = await running(OllamaBackend("t", OllamaConfig(url=emulator.url, timeouts=Timeouts(between_chunks=0.2))))
    emulator.faults.append(Fault(hang_after=2))
    pieces = []
    with pytest.raises(BackendTimeout) as info:
        async for item in backend.chat(ask()):
            pieces.append(item)
    assert len(pieces) == 2
    assert "timeouts.between_chunks" in info.value.message
    assert isinstance(info.value, TimeoutError)
    emulator.release()


async def test_no_first_byte_within_between_chunks_is_a_timeout(emulator, running):
    backend = await running(OllamaBackend("t", OllamaConfig(url=emulator.url, timeouts=Timeouts(between_chunks=0.2))))
    emulator.faults.append(Fault(hang_before_first_byte=True))
    with pytest.raises(BackendTimeout, match="sent nothing for 0.2 s"):
        await drain(backend)
    emulator.release()


async def test_no_models_and_no_default_is_a_clear_error(running):
    from conductor_core.testing.ollama_emulator import OllamaEmulator

    async with OllamaEmulator(models=[]) as empty:
        backend = await running(OllamaBackend("e", OllamaConfig(url=empty.url)))
        with pytest.raises(ModelNotFound, match="no models and no default_model"):
            await drain(backend, ask(model=None))
