"""The process that hosts llama.cpp's HTTP server, and the one function that builds it.

Why a child process by default: ``xllamacpp.Server(params)`` loads the model while holding the
GIL (measured: the event loop of the calling process stalls for the whole load, ~0.5 s for
SmolLM2-135M and seconds for bigger GGUFs), so ``anyio.to_thread`` cannot keep the loop free.
In a child the load blocks nobody, and a llama.cpp abort on a broken file cannot take the
conductor down with it.

Protocol with the parent (one JSON line each way): the parent writes the settings to stdin;
the child answers ``{"address": "http://127.0.0.1:PORT"}`` or ``{"error": "..."}`` on stdout,
then serves until stdin reaches EOF (the parent closed it, or died), and exits. Settings come
over stdin, not argv, because they carry the server's API key and argv is public (``ps``).

This module imports nothing from the conductor so that the child starts fast.
"""

from __future__ import annotations

import json
import sys
from typing import Any

__all__ = ["build_server", "main"]


def build_server(settings: dict[str, Any]) -> Any:
    """Start llama.cpp's OpenAI-compatible server in this process (blocks while it loads)."""
    import xllamacpp as xlc

    params = xlc.CommonParams()
    params.model.path = settings["model_path"]
    params.model_alias = {settings["alias"]}
    params.hostnames = ["127.0.0.1"]
    params.port = int(settings.get("port", 0))  # 0: the OS picks a free port; read it back
    params.n_ctx = int(settings["ctx_size"])
    params.n_parallel = int(settings["parallel"])
    if settings.get("threads"):
        params.cpuparams.n_threads = int(settings["threads"])
        params.cpuparams_batch.n_threads = int(settings["threads"])
    if settings.get("api_key"):
        params.api_keys = [settings["api_key"]]
    params.endpoint_metrics = True
    params.endpoint_slots = True
    params.ui = False
    params.verbosity = int(settings.get("verbosity", 0))
    return xlc.Server(params)


def _reply(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def main() -> int:
    line = sys.stdin.buffer.readline()
    if not line:
        return 1
    settings = json.loads(line)
    try:
        import xllamacpp  # noqa: F401
    except ImportError as exc:
        _reply({"error": f"xllamacpp is not installed ({exc}): pip install xllamacpp"})
        return 2
    try:
        server = build_server(settings)
    except Exception as exc:  # xllamacpp raises RuntimeError("Failed to init server, ...")
        _reply({"error": f"llama.cpp could not start with {settings['model_path']}: {exc}"})
        return 3
    _reply({"address": server.listening_address})
    sys.stdin.buffer.read()  # serve until the parent closes stdin or goes away
    del server  # stops the HTTP server and frees the model
    return 0


if __name__ == "__main__":
    sys.exit(main())
