"""A Conductor backend that answers with a Markov chain built from the conversation."""

from __future__ import annotations

import random
from collections import defaultdict

import anyio
import msgspec

from conductor_core import BackendHealth, ChatRequest, Finish, hookimpl
from conductor_core.errors import ModelNotFound


class MarkovConfig(msgspec.Struct, forbid_unknown_fields=True):
    """The ``[backends.NAME]`` table of a ``type = "markov"`` backend."""

    length: int = 20  # words per reply; a request's options.num_predict overrides it
    token_delay_ms: float = 0.0  # pause between words, to look like a real model
    seed: int = 0


class MarkovBackend:
    default_model = "markov"

    def __init__(self, name: str, config: MarkovConfig) -> None:
        self.name = name
        self.config = config

    async def chat(self, request: ChatRequest):
        model = request.model or self.default_model
        if model != self.default_model:
            raise ModelNotFound(f"model {model!r} not found (this backend serves 'markov')", backend=self.name, model=model)
        words = " ".join(m.content for m in request.messages).split() or ["..."]
        chain = defaultdict(list)
        for word, following in zip(words, words[1:] + words[:1]):
            chain[word].append(following)
        rng = random.Random(self.config.seed)
        length = (request.options or {}).get("num_predict", self.config.length)
        word = words[0]
        for i in range(length):
            await anyio.sleep(self.config.token_delay_ms / 1000)  # a checkpoint: cancellable, never blocks
            yield word if i == 0 else " " + word
            word = rng.choice(chain[word])
        yield Finish(model, "length", completion_tokens=length)

    async def models(self) -> list[str]:
        return [self.default_model]

    async def health(self) -> BackendHealth:
        return BackendHealth("up")

    async def aclose(self) -> None:
        pass


@hookimpl
def conductor_register_backends(register):
    register("markov", MarkovBackend, MarkovConfig)
