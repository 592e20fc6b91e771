"""What a user does on a fresh machine: `conductor serve` with no Ollama, then `conductor chat`,
answered by the real embedded model (SmolLM2 on llama.cpp). Real processes, real socket, real
model: no fake anywhere."""

from __future__ import annotations

import os
import shutil
import signal
import sys
import tempfile
from pathlib import Path

import anyio
import pytest

pytestmark = pytest.mark.slow

CONFIG = """\
[backends.local]
type = "ollama"
url = "http://127.0.0.1:{dead_port}"   # nothing listens: Ollama is "not installed"

[backends.embedded]
type = "llamacpp"
threads = 2

[transports.unix]
type = "unix"
path = "{socket}"

[router]
type = "priority"
"""


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_serve_then_chat_answers_with_the_embedded_model_when_ollama_is_absent():
    conductor = shutil.which("conductor", path=os.path.dirname(sys.executable)) or "conductor"
    short = Path(tempfile.mkdtemp(prefix="ce-"))  # socket paths must stay short
    socket = short / "run" / "c.sock"
    config = short / "conductor.toml"
    config.write_text(CONFIG.format(socket=socket, dead_port=_free_port()))
    server = await anyio.open_process([conductor, "serve", "--config", str(config)])
    try:
        with anyio.fail_after(30):
            while not await anyio.Path(socket).exists():
                await anyio.sleep(0.05)
        with anyio.fail_after(120):
            result = await anyio.run_process(
                [conductor, "chat", "--config", str(config), "--stats", "Name a colour. One word."], check=False
            )
        out, err = result.stdout.decode(), result.stderr.decode()
        assert result.returncode == 0, err
        assert out.strip(), "the model printed nothing"
        assert "llamacpp" not in out  # stats go to stderr, the reply to stdout
        assert "embedded" in err and "smollm2-135m" in err  # --stats: which backend and model served
        status = await anyio.run_process([conductor, "status", "--config", str(config), "--json"], check=False)
        assert status.returncode == 0 and b'"embedded"' in status.stdout
    finally:
        server.send_signal(signal.SIGTERM)
        with anyio.move_on_after(15):
            await server.wait()
        if server.returncode is None:
            server.kill()
            await server.wait()
        await server.aclose()
        assert server.returncode == 0
        assert not socket.exists()  # removed at shutdown
        shutil.rmtree(short, ignore_errors=True)


def _port_busy(port: int) -> bool:
    import socket

    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


async def test_zero_config_prefers_ollama_when_it_runs(tmp_path):
    """No config file at all: Ollama (here the emulator at $OLLAMA_HOST) is tried first."""
    from conductor_core.testing.ollama_emulator import OllamaEmulator

    if _port_busy(8765):
        pytest.skip("the default WebSocket port 8765 is taken by another process")
    conductor = shutil.which("conductor", path=os.path.dirname(sys.executable)) or "conductor"
    runtime = Path(tempfile.mkdtemp(prefix="cz-"))
    os.chmod(runtime, 0o700)
    env = {
        **os.environ,
        "XDG_RUNTIME_DIR": str(runtime),
        "XDG_CONFIG_HOME": str(tmp_path / "no-config"),
        "CONDUCTOR_CONFIG": "",
        "CONDUCTOR_SOCKET": "",
    }
    async with OllamaEmulator(models=["llama3.2"], reply="Hello from Ollama") as emu:
        env["OLLAMA_HOST"] = emu.url
        server = await anyio.open_process([conductor, "serve"], env=env)
        try:
            socket = runtime / "conductor" / "conductor.sock"
            with anyio.fail_after(30):
                while not await anyio.Path(socket).exists():
                    await anyio.sleep(0.05)
            result = await anyio.run_process([conductor, "chat", "--stats", "hi"], env=env, check=False)
            assert result.returncode == 0, result.stderr
            assert result.stdout.decode().strip() == "Hello from Ollama"
            assert "ollama" in result.stderr.decode()
            assert emu.stats.requests  # the emulator really served it
        finally:
            server.send_signal(signal.SIGTERM)
            with anyio.move_on_after(15):
                await server.wait()
            if server.returncode is None:
                server.kill()
                await server.wait()
            await server.aclose()
            shutil.rmtree(runtime, ignore_errors=True)
        assert server.returncode == 0
