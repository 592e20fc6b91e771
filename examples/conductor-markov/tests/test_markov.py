"""conductor-markov passes the backend conformance suite, serves chats through a running kernel,
and works end to end: `conductor serve` with a config file, then `conductor chat`."""

import os
import shutil
import signal
import sys
import tempfile
from pathlib import Path

import anyio
import pytest
from conductor_core.protocol import Chat, Done
from conductor_core.testing.conformance import backend_conformance
from conductor_core.testing.fakes import running_conductor
from conductor_core.testing.wire import collect, handshake

from conductor_markov import MarkovBackend, MarkovConfig

pytestmark = pytest.mark.anyio

TestMarkovConformance = backend_conformance(lambda: MarkovBackend("conformance", MarkovConfig()), model="markov")


async def test_through_a_running_kernel():
    config = {"backends": {"markov": {"type": "markov", "length": 5}}}
    async with running_conductor(config) as kernel, kernel.connect() as client:
        welcome = await handshake(client)
        assert welcome.models == ["markov"]
        await client.send(Chat("c1", "one two three"))
        text, tokens, done = await collect(client, "c1")
    assert text == "one two three one two" and tokens == 5
    assert isinstance(done, Done) and done.stats.backend == "markov"


CONFIG = """\
[backends.markov]
type = "markov"
length = 5

[transports.unix]
type = "unix"
path = "{socket}"
"""


async def test_conductor_serve_and_chat(tmp_path):
    conductor = Path(sys.executable).with_name("conductor")
    short = Path(tempfile.mkdtemp(prefix="cm-"))  # a socket path must stay under ~107 bytes
    socket = short / "run" / "c.sock"
    config = tmp_path / "conductor.toml"
    config.write_text(CONFIG.format(socket=socket))
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONDUCTOR_")}
    env.update(HOME=str(tmp_path), CONDUCTOR_LOAD_PLUGINS="conductor-markov,conductor-transport-unix")
    server = await anyio.open_process([conductor, "serve", "--config", config], env=env)
    try:
        with anyio.fail_after(30):
            while not await anyio.Path(socket).exists():
                assert server.returncode is None, "conductor serve exited early"
                await anyio.sleep(0.05)
        result = await anyio.run_process([conductor, "chat", "--config", config, "one two three"], env=env, check=False)
        assert (result.returncode, result.stdout) == (0, b"one two three one two\n"), result.stderr
    finally:
        server.send_signal(signal.SIGTERM)
        with anyio.move_on_after(30):
            await server.wait()
        if server.returncode is None:
            server.kill()
            await server.wait()
        await server.aclose()
        shutil.rmtree(short, ignore_errors=True)
    assert server.returncode == 0
