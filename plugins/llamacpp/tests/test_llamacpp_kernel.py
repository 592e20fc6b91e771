"""The embedded backend through a running kernel: registration (type, default instance after
Ollama), and a chat with no model named answered by the real SmolLM2 via the default model."""

from __future__ import annotations

import anyio
from conductor_core.config import Config, resolve_components
from conductor_core.plugins import get_registry
from conductor_core.protocol import Chat, Done, StatusRequest, StatusReply, Welcome
from conductor_core.testing.fakes import running_conductor
from conductor_core.testing.wire import collect, handshake

from conductor_llamacpp.backend import LlamaCppBackend
from conductor_llamacpp.plugin import LlamaCppConfig


def test_registered_as_a_default_after_ollama():
    registry = get_registry()
    reg = registry.backends["llamacpp"]
    assert reg.config_type is LlamaCppConfig and reg.default == {} and reg.order == 50
    assert registry.backends["openai"].default is None  # needs a base_url: never a default
    specs = resolve_components(Config(), registry)["backends"]
    names = [spec.name for spec in specs]
    assert "llamacpp" in names
    if "ollama" in names:
        assert names.index("ollama") < names.index("llamacpp")


async def test_kernel_chat_without_a_model_uses_the_embedded_default():
    config = {"backends": {"local": {"type": "llamacpp", "max_tokens": 12}}}
    async with running_conductor(config) as kernel, kernel.connect() as client:
        backend = kernel.conductor.backends["local"]
        assert isinstance(backend, LlamaCppBackend)
        welcome = await handshake(client)
        assert isinstance(welcome, Welcome)
        await client.send(Chat("c1", "Say hello."))
        with anyio.fail_after(60):  # a hang guard; the server starts in the background
            text, tokens, final = await collect(client, "c1")
        assert isinstance(final, Done), final
        assert text.strip() and tokens >= 1
        assert final.stats.backend == "local" and final.stats.model == "smollm2-135m"
        assert final.stats.finish_reason in ("stop", "length")
        await client.send(StatusRequest())
        status = await client.receive()
        assert isinstance(status, StatusReply)
        assert status.backends["local"]["state"] == "ready"
    assert backend.status()["state"] == "stopped"  # the kernel's shutdown stopped the server
