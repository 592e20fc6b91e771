"""The benchmark's Ollama backend: ``conductor_core.testing.ollama_emulator`` in its own process,
on uvloop, with two models: ``fast`` (zero delay) and ``paced`` (``--paced-ms`` per token).

The reply echoes the prompt ("Emulated reply to: <prompt>"), cycled to ``num_predict`` tokens, so
every request has its own text and a reply delivered to the wrong client fails the hash check.

    python -m benchmarks.emulator --port 0 --paced-ms 10
"""

from __future__ import annotations

import argparse

import anyio

from conductor_core.testing.ollama_emulator import EmulatedModel, Fault, OllamaEmulator


def build(paced_ms: float, port: int = 0) -> OllamaEmulator:
    models = [EmulatedModel("fast"), EmulatedModel("paced", fault=Fault(token_delay=paced_ms / 1000))]
    return OllamaEmulator(models, loaded=["fast", "paced"], port=port)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.emulator", description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--paced-ms", type=float, default=10.0)
    args = parser.parse_args(argv)
    emu = build(args.paced_ms, args.port)

    async def run() -> None:
        async with anyio.create_task_group() as tg:
            port = await tg.start(emu.serve)
            print(f"ollama emulator listening on http://127.0.0.1:{port}", flush=True)

    from conductor_core.runner import loop_options

    try:
        anyio.run(run, backend="asyncio", backend_options=loop_options())
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
