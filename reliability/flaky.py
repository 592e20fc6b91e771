"""Emulated Ollama backends that fail at a low random rate, and the reply every prompt gets.

The soak's clients check each reply against :func:`expected_reply`: the emulator answers a
prompt with tokens derived from a hash of it, so a client knows the exact text (and its hash)
without asking anyone. The conductor runs with ``history.max_messages = 0`` and no system
prompt, so the prompt the emulator sees is exactly the user's message.

Faults are drawn per generation request from :data:`FAULT_WEIGHTS` (``status_503``,
``status_429`` with ``Retry-After``, ``die`` mid-stream, an ``error`` line, an invalid-JSON
``garbage`` line, ``hang`` before the first byte or between chunks, ``no_done``). A fault fires
before or after the first token at random, so both the fallback path (nothing sent yet: try the
other backend) and the mid-stream failure path (text sent: error, never a silent retry) run.

Standalone (the soak runs it in its own process)::

    python -m reliability.flaky --backends 2 --fault-rate 0.02 --seed 1
    # prints one line per backend: "flaky emulator 0 listening on http://127.0.0.1:PORT"
"""

from __future__ import annotations

import argparse
import hashlib
import random
from collections import Counter
from typing import Any

import anyio
import msgspec

from conductor_core.testing.http11 import Request, Response
from conductor_core.testing.ollama_emulator import OllamaEmulator
from conductor_core.testing.ollama_state import Fault

__all__ = ["FAULT_WEIGHTS", "MODEL", "FlakyEmulator", "expected_reply", "main", "reply_digest", "reply_tokens"]

MODEL = "soak"
FAULT_WEIGHTS = {
    "status_503": 0.25,
    "status_429": 0.10,
    "die": 0.20,
    "error": 0.15,
    "garbage": 0.10,
    "hang": 0.10,
    "no_done": 0.10,
}
# Words with JSON escapes, multi-byte UTF-8 and brackets that are not avatar tags: each must
# come through byte for byte.
_WORDS = [
    "the", "conductor", "relays", "every", "token", "at", "once", "café", "naïve", "日本語", "🎼",
    '"quoted"', "back\\slash", "tab\there", "new\nline", "[1]", "[not a tag", "a]", "<b>html</b>",
    "&amp;", "0", "—", "end.",
]


def reply_tokens(prompt: str) -> list[str]:
    """The tokens the flaky emulator streams for ``prompt`` (4 to 59 of them)."""
    digest = hashlib.blake2b(prompt.encode(), digest_size=16).digest()
    rng = random.Random(digest)
    count = 4 + digest[0] % 56
    return [rng.choice(_WORDS) if i == 0 else " " + rng.choice(_WORDS) for i in range(count)]


def expected_reply(prompt: str) -> str:
    return "".join(reply_tokens(prompt))


def reply_digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class FlakyEmulator(OllamaEmulator):
    """An :class:`OllamaEmulator` whose generation requests fail with probability ``fault_rate``.

    ``injected`` counts the faults drawn, by kind; ``GET /reliability/faults`` returns them.
    """

    def __init__(self, *, fault_rate: float, seed: int, retry_after_s: int = 1, **kwargs: Any) -> None:
        super().__init__([MODEL], loaded=[MODEL], **kwargs)
        self.fault_rate = fault_rate
        self.rng = random.Random(seed)
        self.retry_after_s = retry_after_s
        self.injected: Counter[str] = Counter()
        self.served = 0
        self._routes[("GET", "/reliability/faults")] = self._faults_route

    async def _faults_route(self, request: Request, _: Any) -> Response:
        return Response(200, msgspec.json.encode({"served": self.served, "injected": dict(self.injected)}))

    def _draw(self, tokens: list[str]) -> tuple[str, Fault] | None:
        if self.rng.random() >= self.fault_rate:
            return None
        kind = self.rng.choices(list(FAULT_WEIGHTS), weights=list(FAULT_WEIGHTS.values()))[0]
        at = self.rng.randrange(len(tokens) + 1) if self.rng.random() < 0.7 else 0
        fault = {
            "status_503": lambda: Fault(status=503),
            "status_429": lambda: Fault(status=429),
            "die": lambda: Fault(die_after=at),
            "error": lambda: Fault(error_after=at),
            "garbage": lambda: Fault(garbage_after=min(at, len(tokens) - 1)),
            "hang": lambda: Fault(hang_after=at) if at else Fault(hang_before_first_byte=True),
            "no_done": lambda: Fault(no_done=True),
        }[kind]()
        return kind, fault

    def prepare(self, request, body, prompt, empty, num_predict, keep_alive, stream):  # noqa: D102
        tokens = reply_tokens(prompt)
        drawn = None if empty else self._draw(tokens)
        if drawn is not None:
            kind, fault = drawn
            self.injected[kind] += 1
            self.faults.append(fault)  # taken by super().prepare() in this same call
        gen = super().prepare(request, body, prompt, empty, num_predict, keep_alive, stream)
        if isinstance(gen, Response):
            if drawn is not None and drawn[0] == "status_429":
                gen.headers = {"Retry-After": str(self.retry_after_s)}
            return gen
        if not empty:
            self.served += 1
            gen.tokens = tokens
            gen.done_reason = "stop"
        return gen


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m reliability.flaky", description=__doc__.split("\n\n")[0])
    parser.add_argument("--backends", type=int, default=2)
    parser.add_argument("--fault-rate", type=float, default=0.02)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--token-delay-ms", type=float, default=5.0)
    args = parser.parse_args(argv)
    emulators = [
        FlakyEmulator(fault_rate=args.fault_rate, seed=args.seed + i, token_delay=args.token_delay_ms / 1000)
        for i in range(args.backends)
    ]

    async def run() -> None:
        async with anyio.create_task_group() as tg:
            for i, emu in enumerate(emulators):
                port = await tg.start(emu.serve)
                print(f"flaky emulator {i} listening on http://127.0.0.1:{port}", flush=True)

    from conductor_core.runner import loop_options

    try:
        anyio.run(run, backend="asyncio", backend_options=loop_options())
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
