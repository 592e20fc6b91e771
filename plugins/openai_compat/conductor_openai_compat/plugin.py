"""Registers the ``openai`` backend type: any server speaking OpenAI chat completions.

Example ``conductor.toml``::

    [backends.lmstudio]
    type = "openai"
    base_url = "http://127.0.0.1:1234/v1"
    default_model = "qwen2.5-7b-instruct"

    [backends.openai]
    type = "openai"
    base_url = "https://api.openai.com/v1"
    api_key_env = "OPENAI_API_KEY"      # or api_key = "sk-..." (redacted by `conductor config`)
    default_model = "gpt-4o-mini"
    headers = { "OpenAI-Organization" = "org-..." }
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import msgspec
from conductor_core.backends import Timeouts
from conductor_core.hookspecs import hookimpl

if TYPE_CHECKING:  # the backend (and httpx) load only when an instance is built: start-up time
    from .backend import OpenAICompatBackend

__all__ = ["OpenAIConfig", "conductor_register_backends", "make_backend"]

log = logging.getLogger("conductor.openai")


class OpenAIConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """The ``[backends.NAME]`` table of an ``openai`` backend."""

    base_url: str = "http://127.0.0.1:8080/v1"
    api_key: str | None = None
    api_key_env: str | None = None  # name of an environment variable holding the key
    headers: dict[str, str] = {}
    default_model: str | None = None  # None: the first model the server lists
    timeouts: Timeouts = Timeouts()
    extra_body: dict[str, Any] = {}  # merged into every request (server-specific fields)
    health_url: str | None = None  # e.g. "http://127.0.0.1:8080/health" for llama.cpp
    max_connections: int = 16
    trust_env: bool = True  # honour HTTP(S)_PROXY / NO_PROXY
    pass_unknown_options: bool = False  # send options like top_k as-is (llama.cpp, vLLM accept them)

    def __post_init__(self) -> None:
        if not self.base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must start with http:// or https://, not {self.base_url!r}")
        if self.max_connections < 1:
            raise ValueError("max_connections must be at least 1")
        if self.api_key and self.api_key_env:
            raise ValueError("set api_key or api_key_env, not both")

    def __repr__(self) -> str:  # never show the key, even in a debug log of the config
        key = "***" if self.api_key else None
        return f"OpenAIConfig(base_url={self.base_url!r}, api_key={key}, api_key_env={self.api_key_env!r})"


def make_backend(name: str, config: OpenAIConfig) -> OpenAICompatBackend:
    """The registered factory: one configured instance."""
    from .backend import OpenAICompatBackend, api_key_from

    key = api_key_from(config.api_key, config.api_key_env)
    if config.api_key_env and not key:
        log.warning("backends.%s: api_key_env names %s, which is not set: requests go without a key",
                    name, config.api_key_env)
    return OpenAICompatBackend(
        name,
        base_url=config.base_url,
        api_key=key,
        headers=config.headers,
        default_model=config.default_model,
        timeouts=config.timeouts,
        extra_body=config.extra_body,
        health_url=config.health_url,
        max_connections=config.max_connections,
        trust_env=config.trust_env,
        pass_unknown_options=config.pass_unknown_options,
    )


@hookimpl
def conductor_register_backends(register):
    register("openai", make_backend, OpenAIConfig)
