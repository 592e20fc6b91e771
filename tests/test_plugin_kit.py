"""The plugin author's kit: the stable `conductor plugins --json` shape, the hook trace switch,
and the pytest plugin's fixtures."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from conductor_core import plugins
from conductor_core.plugins import enable_hook_tracing, get_registry, load_plugins, pm
from conductor_core.testing.fakes import FakeBackend, Script
from conductor_core.testing.ollama_emulator import OllamaEmulator
from conductor_core.testing.pytest_plugin import KernelFixture

CONDUCTOR = str(Path(sys.executable).with_name("conductor"))


def conductor(tmp_path, *args, **env):
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("CONDUCTOR_")}
    full_env.update(PYTHONPATH=str(tmp_path), HOME=str(tmp_path / "home"), XDG_CONFIG_HOME=str(tmp_path / "xdg"), **env)
    return subprocess.run([CONDUCTOR, *args], capture_output=True, text=True, env=full_env, timeout=60, cwd=tmp_path, check=False)


@pytest.fixture
def clean_plugins(monkeypatch):
    monkeypatch.setenv("CONDUCTOR_LOAD_PLUGINS", "")
    monkeypatch.delenv("CONDUCTOR_EXTRA_PLUGINS", raising=False)
    monkeypatch.delenv("CONDUCTOR_TRACE_HOOKS", raising=False)
    plugins.reset_for_tests()
    try:
        yield
    finally:
        plugins.reset_for_tests()


# ---------------------------------------------------------------- conductor plugins --json


def test_plugins_json_shape_is_stable(tmp_path):
    """docs/plugins.md documents these fields; they are only ever added to, never changed."""
    (tmp_path / "ptest_kit_broken.py").write_text('raise RuntimeError("boom")\n')
    result = conductor(tmp_path, "plugins", "--json", "--all", CONDUCTOR_EXTRA_PLUGINS="ptest_kit_broken")
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert set(out) == {"plugins", "errors"}
    assert out["plugins"], "the built-ins are listed with --all"
    for p in out["plugins"]:
        assert set(p) == {"name", "distribution", "version", "hooks", "builtin"}, p
        assert all(isinstance(p[k], str) and p[k] for k in ("name", "distribution", "version"))
        assert isinstance(p["builtin"], bool)
        assert isinstance(p["hooks"], list) and p["hooks"] == sorted(p["hooks"])
        assert all(h.startswith("conductor_") for h in p["hooks"])
    builtins = [p["builtin"] for p in out["plugins"]]
    assert builtins == sorted(builtins), "third-party plugins first, then the built-ins"
    third = [p["distribution"] for p in out["plugins"] if not p["builtin"]]
    assert third == sorted(third)
    markov = [p for p in out["plugins"] if p["distribution"] == "conductor-markov"]
    assert markov == [
        {"name": "markov", "distribution": "conductor-markov", "version": "0.1.0",
         "hooks": ["conductor_register_backends"], "builtin": False},
    ]  # fmt: skip
    assert out["errors"] == [{"distribution": "ptest_kit_broken", "error": "RuntimeError: boom"}]


# ---------------------------------------------------------------- CONDUCTOR_TRACE_HOOKS


def test_enable_hook_tracing_writes_hook_calls_and_registrations(clean_plugins, monkeypatch):
    monkeypatch.setenv("CONDUCTOR_EXTRA_PLUGINS", "conductor_core.testing.fake_plugin")
    lines: list[str] = []
    undo = enable_hook_tracing(lines.append)
    try:
        get_registry()
        pm.hook.conductor_register_commands(cli=None)
    finally:
        undo()
    text = "".join(lines)
    assert "conductor_register_backends [hook]\n    plugin: conductor_core.testing.fake_plugin\n" in text
    assert "register backends 'fake' from conductor_core.testing.fake_plugin [hook]\n" in text
    assert "register routers 'priority' from conductor [hook]\n" in text
    stripped = [line.strip() for line in text.splitlines()]  # pluggy indents nested calls
    assert ["conductor_register_commands [hook]", "cli: None", "finish conductor_register_commands --> [] [hook]"] == [
        line for line in stripped if "commands" in line or line.startswith("cli:")
    ]
    lines.clear()
    get_registry()
    pm.hook.conductor_register_commands(cli=None)
    assert lines == [], "tracing stays off once undone"


def test_the_environment_variable_turns_tracing_on_when_plugins_load(clean_plugins, monkeypatch, capsys):
    monkeypatch.setenv("CONDUCTOR_TRACE_HOOKS", "1")
    load_plugins()
    get_registry()
    err = capsys.readouterr().err
    assert "conductor: trace: register routers 'priority' from conductor [hook]\n" in err
    plugins.reset_for_tests()  # also turns tracing off
    monkeypatch.setenv("CONDUCTOR_TRACE_HOOKS", "0")
    get_registry()
    assert capsys.readouterr().err == ""


def test_trace_switch_in_a_real_command(tmp_path):
    config = tmp_path / "conductor.toml"
    config.write_text('[backends.markov]\ntype = "markov"\n')
    traced = conductor(tmp_path, "config", "--json", "--config", str(config), CONDUCTOR_LOAD_PLUGINS="conductor-markov", CONDUCTOR_TRACE_HOOKS="1")
    assert traced.returncode == 0, traced.stderr
    assert "conductor: trace: register backends 'markov' from conductor-markov [hook]\n" in traced.stderr
    assert json.loads(traced.stdout)["config"]["backends"]["markov"]["type"] == "markov"  # stdout stays clean
    quiet = conductor(tmp_path, "config", "--config", str(config), CONDUCTOR_LOAD_PLUGINS="conductor-markov")
    assert quiet.returncode == 0 and "trace" not in quiet.stderr


# ---------------------------------------------------------------- pytest plugin fixtures


def test_fake_backend_fixture_is_fresh(fake_backend):
    assert isinstance(fake_backend, FakeBackend) and fake_backend.name == "fake"
    assert fake_backend.requests == 0 and not fake_backend.scripts


async def test_conductor_client_chats_with_the_default_kernel(conductor_kernel, conductor_client):
    assert isinstance(conductor_kernel, KernelFixture)
    assert conductor_client.welcome is not None
    conductor_kernel.fake.push(Script(tokens=["a", "b", "c"]))
    assert await conductor_client.chat("hi").text() == "abc"
    assert conductor_kernel.fake.completed == 1 and list(conductor_kernel.backends) == ["fake"]


async def test_kernel_connect_gives_a_raw_connection(conductor_kernel):
    from conductor_core.protocol import Welcome
    from conductor_core.testing.wire import handshake

    async with conductor_kernel.connect() as client:
        assert isinstance(await handshake(client), Welcome)


class TestConductorConfigOverride:
    @pytest.fixture
    def conductor_config(self):
        return {"backends": {"echo": {"type": "fake", "echo": True, "models": ["e-1"]}}}

    async def test_the_kernel_runs_the_overridden_config(self, conductor_kernel, conductor_client):
        assert list(conductor_kernel.backends) == ["echo"]
        assert await conductor_client.chat("say this back").text() == "say this back"


async def test_ollama_emulator_fixture_serves_the_api(ollama_emulator):
    assert isinstance(ollama_emulator, OllamaEmulator)
    async with httpx.AsyncClient(base_url=ollama_emulator.url, trust_env=False) as http:
        tags = (await http.get("/api/tags")).json()
    assert [m["name"] for m in tags["models"]] == ["llama3.2:latest"]
