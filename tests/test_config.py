"""conductor.toml discovery, validation, plugin sections, defaults, redaction, and the CLI's
one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import msgspec
import pytest

from conductor_core import plugins
from conductor_core.config import (
    Config,
    ConfigError,
    HistoryConfig,
    LimitsConfig,
    find_config_file,
    load_config,
    redacted,
    resolve_components,
)
from conductor_core.plugins import Registration, Registry, get_registry
from conductor_core.routing import PriorityConfig, PriorityRouter
from conductor_core.testing.fakes import FakeBackend, FakeConfig

CONDUCTOR = str(Path(sys.executable).with_name("conductor"))


@pytest.fixture(autouse=True)
def clean_env(monkeypatch, tmp_path):
    """No real user config or environment leaks into these tests."""
    for var in ("CONDUCTOR_CONFIG", "CONDUCTOR_DEFAULT_MODEL", "CONDUCTOR_SYSTEM_PROMPT", "CONDUCTOR_LOG_LEVEL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def config_error(path, **kwargs) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(path, **kwargs)
    return str(info.value)


# ---------------------------------------------------------------- discovery order


def test_no_file_anywhere_means_built_in_defaults():
    assert find_config_file() is None
    config = load_config()
    assert config.source == "built-in defaults"
    assert config == Config()


def test_xdg_file_is_found(tmp_path):
    xdg = write(tmp_path / "xdg/conductor/conductor.toml", 'default_model = "from-xdg"')
    assert find_config_file() == xdg
    config = load_config()
    assert (config.default_model, config.source) == ("from-xdg", str(xdg))


def test_home_dot_config_when_xdg_is_unset(tmp_path, monkeypatch):
    monkeypatch.delenv("XDG_CONFIG_HOME")
    home_file = write(tmp_path / "home/.config/conductor/conductor.toml", 'default_model = "from-home"')
    assert find_config_file() == home_file
    assert load_config().default_model == "from-home"


def test_env_beats_xdg(tmp_path, monkeypatch):
    write(tmp_path / "xdg/conductor/conductor.toml", 'default_model = "from-xdg"')
    env_file = write(tmp_path / "env.toml", 'default_model = "from-env"')
    monkeypatch.setenv("CONDUCTOR_CONFIG", str(env_file))
    assert find_config_file() == env_file
    assert load_config().default_model == "from-env"


def test_explicit_path_beats_env_and_xdg(tmp_path, monkeypatch):
    write(tmp_path / "xdg/conductor/conductor.toml", 'default_model = "from-xdg"')
    monkeypatch.setenv("CONDUCTOR_CONFIG", str(write(tmp_path / "env.toml", 'default_model = "from-env"')))
    explicit = write(tmp_path / "explicit.toml", 'default_model = "from-flag"')
    assert find_config_file(explicit) == explicit
    config = load_config(explicit)
    assert (config.default_model, config.source) == ("from-flag", str(explicit))


def test_environ_argument_is_used_for_discovery_too(tmp_path):
    env_file = write(tmp_path / "env.toml", 'default_model = "from-env"')
    environ = {"CONDUCTOR_CONFIG": str(env_file)}
    assert find_config_file(environ=environ) == env_file
    assert load_config(environ=environ).default_model == "from-env"


def test_missing_explicit_file_is_an_error_not_the_defaults(tmp_path):
    message = config_error(tmp_path / "nope.toml")
    assert str(tmp_path / "nope.toml") in message and "no such file" in message


def test_missing_env_file_is_an_error_not_the_defaults(tmp_path, monkeypatch):
    monkeypatch.setenv("CONDUCTOR_CONFIG", str(tmp_path / "gone.toml"))
    assert "gone.toml: no such file" in config_error(None)


def test_directory_instead_of_file(tmp_path):
    assert f"{tmp_path}: cannot read" in config_error(tmp_path)


def test_empty_env_var_is_ignored(tmp_path, monkeypatch):
    monkeypatch.setenv("CONDUCTOR_CONFIG", "")
    assert load_config().source == "built-in defaults"


# ---------------------------------------------------------------- environment overrides


def test_env_overrides_the_file(tmp_path, monkeypatch):
    path = write(tmp_path / "c.toml", 'default_model = "file"\nsystem_prompt = "file"\nlog_level = "info"\n')
    monkeypatch.setenv("CONDUCTOR_DEFAULT_MODEL", "env-model")
    monkeypatch.setenv("CONDUCTOR_SYSTEM_PROMPT", "be terse")
    monkeypatch.setenv("CONDUCTOR_LOG_LEVEL", "debug")
    config = load_config(path)
    assert (config.default_model, config.system_prompt, config.log_level) == ("env-model", "be terse", "debug")


def test_env_overrides_the_defaults(monkeypatch):
    monkeypatch.setenv("CONDUCTOR_DEFAULT_MODEL", "env-model")
    config = load_config()
    assert config.default_model == "env-model"
    assert config.source == "built-in defaults"


def test_environ_argument_overrides_without_touching_os_environ():
    assert load_config(environ={"CONDUCTOR_DEFAULT_MODEL": "x"}).default_model == "x"
    assert load_config().default_model is None


def test_empty_env_override_is_ignored(tmp_path, monkeypatch):
    monkeypatch.setenv("CONDUCTOR_DEFAULT_MODEL", "")
    assert load_config(write(tmp_path / "c.toml", 'default_model = "file"')).default_model == "file"


def test_log_level_is_case_insensitive(monkeypatch):
    monkeypatch.setenv("CONDUCTOR_LOG_LEVEL", "WARNING")
    assert load_config().log_level == "warning"


def test_bad_log_level_from_env_names_the_variable(monkeypatch):
    monkeypatch.setenv("CONDUCTOR_LOG_LEVEL", "loud")
    message = config_error(None)
    assert "$CONDUCTOR_LOG_LEVEL" in message and "log_level" in message and "debug, info" in message


# ---------------------------------------------------------------- a full, valid file


def test_the_documented_shape_loads(tmp_path):
    path = write(
        tmp_path / "c.toml",
        """
        default_model = "llama3.2"
        shutdown_grace_s = 2.5
        [backends.local]
        type = "ollama"
        url = "http://127.0.0.1:11434"
        [transports.unix]
        type = "unix"
        path = "/run/user/1000/conductor/conductor.sock"
        [transports.web]
        type = "ws"
        host = "127.0.0.1"
        port = 8765
        [router]
        type = "health"
        [limits]
        max_frame_bytes = 4096
        [history]
        max_messages = 0
        """,
    )
    config = load_config(path)
    assert config.default_model == "llama3.2"
    assert config.shutdown_grace_s == 2.5
    assert config.backends == {"local": {"type": "ollama", "url": "http://127.0.0.1:11434"}}
    assert list(config.transports) == ["unix", "web"]
    assert config.transports["web"]["port"] == 8765
    assert config.router == {"type": "health"}
    assert config.limits == LimitsConfig(max_frame_bytes=4096)
    assert config.history == HistoryConfig(max_messages=0)


def test_default_router_is_the_installed_default_else_priority():
    from conductor_core.plugins import Registration, Registry
    from conductor_core.routing import PriorityConfig, PriorityRouter

    assert load_config().router is None  # chosen once the plugins are known
    priority = Registration("routers", "priority", PriorityRouter, PriorityConfig, "p", "conductor")
    registry = Registry(routers={"priority": priority})
    (spec,) = resolve_components(load_config(), registry)["routers"]
    assert spec.registration.type_name == "priority"
    smart = Registration("routers", "smart", PriorityRouter, PriorityConfig, "s", "smart-dist", default={}, order=10)
    registry = Registry(routers={"priority": priority, "smart": smart})
    (spec,) = resolve_components(load_config(), registry)["routers"]
    assert spec.registration.type_name == "smart"


# ---------------------------------------------------------------- bad files: one message, file + key + expectation


@pytest.mark.parametrize(
    "toml, key, expected",
    [
        ('default_model = 3', "default_model", "Expected `str | null`, got `int`"),
        ('shutdown_grace_s = "soon"', "shutdown_grace_s", "Expected `float`, got `str`"),
        ("shutdown_grace_s = -1", "shutdown_grace_s", ">= 0"),
        ("[limits]\nmax_frame_bytes = \"big\"", "limits.max_frame_bytes", "Expected `int`, got `str`"),
        ("[limits]\nmax_frame_bytes = 0", "limits.max_frame_bytes", ">= 1"),
        ("[limits]\nmessages_per_second = 0", "limits.messages_per_second", "> 0"),
        ("[limits]\nheartbeat_interval_s = 0", "limits.heartbeat_interval_s", "> 0"),
        ("[history]\nmax_messages = -1", "history.max_messages", ">= 0"),
        ("[history]\nmax_messages = 1.5", "history.max_messages", "Expected `int`, got `float`"),
        ('backends = "local"', "backends", "Expected `object`, got `str`"),
        ('[backends]\nlocal = "http://x"', "backends.local", "expected a table"),
        ('[transports]\nweb = 1', "transports.web", "expected a table"),
        ('router = "priority"', "router", "Expected `object | null`, got `str`"),
        ('limits = []', "limits", "Expected `object`, got `array`"),
        ('log_level = "loud"', "log_level", "expected one of debug, info, warning, error, critical"),
        ("defualt_model = 'x'", "defualt_model", "unknown key"),
        ("[limits]\nmax_frame_byte = 1", "limits.max_frame_byte", "unknown key"),
        ("[history]\nwindow = 1", "history.window", "unknown key"),
        ('source = "x"', "source", "unknown key"),
    ],
)
def test_bad_kernel_key(tmp_path, toml, key, expected):
    path = write(tmp_path / "bad.toml", toml)
    message = config_error(path)
    assert message.startswith(f"{path}: {key}: "), message
    assert expected in message
    assert "\n" not in message


def test_invalid_toml_names_the_file_and_the_line(tmp_path):
    path = write(tmp_path / "bad.toml", 'default_model = "a"\n[backends.local\n')
    message = config_error(path)
    assert message.startswith(f"{path}: not valid TOML")
    assert "line 2" in message


def test_non_utf8_file(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_bytes(b'default_model = "\xff"\n')
    assert config_error(path).startswith(f"{path}: not valid TOML")


# ---------------------------------------------------------------- plugin sections (resolve_components)


class UrlConfig(msgspec.Struct, forbid_unknown_fields=True):
    url: str
    api_key: str | None = None
    timeout_s: float = 5.0


class PipeConfig(msgspec.Struct, forbid_unknown_fields=True):
    path: str = "/tmp/pipe"


def _reg(kind, name, config_type, factory=object, default=None, order=100):
    return Registration(kind, name, factory, config_type, f"plugin-{name}", f"dist-{name}", default, order)


@pytest.fixture
def registry() -> Registry:
    return Registry(
        backends={
            "fake": _reg("backends", "fake", FakeConfig, FakeBackend),
            "http": _reg("backends", "http", UrlConfig, default={"url": "http://127.0.0.1:1"}, order=20),
            "first": _reg("backends", "first", FakeConfig, FakeBackend, default={"models": ["m1"]}, order=10),
        },
        transports={"pipe": _reg("transports", "pipe", PipeConfig, default={}), "hidden": _reg("transports", "hidden", PipeConfig)},
        routers={"priority": _reg("routers", "priority", PriorityConfig, PriorityRouter)},
    )


def resolve(tmp_path, registry, toml):
    return resolve_components(load_config(write(tmp_path / "c.toml", toml)), registry)


def resolve_error(tmp_path, registry, toml) -> str:
    path = tmp_path / "c.toml"
    with pytest.raises(ConfigError) as info:
        resolve(tmp_path, registry, toml)
    message = str(info.value)
    assert message.startswith(f"{path}: "), message
    assert "\n" not in message
    return message[len(f"{path}: ") :]


def test_sections_resolve_to_typed_configs_in_file_order(tmp_path, registry):
    specs = resolve(
        tmp_path,
        registry,
        """
        [backends.zeta]
        type = "fake"
        models = ["a", "b"]
        [backends.alpha]
        type = "http"
        url = "http://h:1"
        [transports.p]
        type = "pipe"
        [router]
        type = "priority"
        order = ["alpha", "zeta"]
        """,
    )
    assert [(s.name, s.registration.type_name) for s in specs["backends"]] == [("zeta", "fake"), ("alpha", "http")]
    assert specs["backends"][0].config == FakeConfig(models=["a", "b"])
    assert specs["backends"][1].config == UrlConfig("http://h:1")
    assert [s.name for s in specs["transports"]] == ["p"]
    (router,) = specs["routers"]
    assert router.config == PriorityConfig(order=["alpha", "zeta"])


def test_type_is_not_passed_to_the_plugin_config_and_config_is_not_mutated(tmp_path, registry):
    config = load_config(write(tmp_path / "c.toml", '[backends.a]\ntype = "fake"\nreply = "hi"\n'))
    resolve_components(config, registry)
    resolve_components(config, registry)
    assert config.backends == {"a": {"type": "fake", "reply": "hi"}}


def test_unknown_backend_type(tmp_path, registry):
    message = resolve_error(tmp_path, registry, '[backends.local]\ntype = "ollama"\n')
    assert message.startswith("backends.local.type: unknown backend type 'ollama'")
    assert "installed: fake, first, http" in message


def test_unknown_router_type(tmp_path, registry):
    message = resolve_error(tmp_path, registry, '[router]\ntype = "health"\n')
    assert message.startswith("router.type: unknown router type 'health'")
    assert "priority" in message


def test_missing_type(tmp_path, registry):
    message = resolve_error(tmp_path, registry, '[transports.web]\nport = 1\n')
    assert message.startswith("transports.web.type: required key is missing")
    assert "hidden, pipe" in message


def test_type_of_wrong_type(tmp_path, registry):
    message = resolve_error(tmp_path, registry, "[backends.local]\ntype = 3\n")
    assert message.startswith("backends.local.type: ")


def test_missing_required_plugin_key(tmp_path, registry):
    assert resolve_error(tmp_path, registry, '[backends.local]\ntype = "http"\n') == (
        "backends.local.url: required key is missing"
    )


def test_nested_key_with_wrong_type(tmp_path, registry):
    message = resolve_error(tmp_path, registry, '[backends.local]\ntype = "http"\nurl = 11434\n')
    assert message == "backends.local.url: Expected `str`, got `int`"


def test_wrong_type_inside_a_plugin_list(tmp_path, registry):
    message = resolve_error(tmp_path, registry, '[backends.f]\ntype = "fake"\nmodels = ["a", 2]\n')
    assert message == "backends.f.models.1: Expected `str`, got `int`"


class PortConfig(msgspec.Struct, forbid_unknown_fields=True):
    port: int = 8765

    def __post_init__(self):
        if not 0 < self.port < 65536:
            raise ValueError(f"port must be 1..65535, got {self.port}")


def test_plugin_validation_in_post_init_names_the_table(tmp_path, registry):
    registry.transports["tcp"] = _reg("transports", "tcp", PortConfig)
    message = resolve_error(tmp_path, registry, '[transports.web]\ntype = "tcp"\nport = 70000\n')
    assert message == "transports.web: port must be 1..65535, got 70000"


def test_unknown_plugin_key(tmp_path, registry):
    message = resolve_error(tmp_path, registry, '[backends.local]\ntype = "http"\nurl = "u"\nuri = "u"\n')
    assert message.startswith("backends.local.uri: unknown key")


def test_unknown_router_key(tmp_path, registry):
    assert resolve_error(tmp_path, registry, '[router]\ntype = "priority"\nordr = []\n').startswith("router.ordr: unknown key")


def test_built_in_defaults_only_without_a_config_file(registry):
    specs = resolve_components(load_config(), registry)
    # default instances are named after their type and ordered by `order`
    assert [(s.name, s.config) for s in specs["backends"]] == [
        ("first", FakeConfig(models=["m1"])),
        ("http", UrlConfig("http://127.0.0.1:1")),
    ]
    assert [s.name for s in specs["transports"]] == ["pipe"]
    assert specs["routers"][0].registration.type_name == "priority"


def test_a_config_file_means_exactly_what_it_says(tmp_path, registry):
    specs = resolve(tmp_path, registry, 'default_model = "m"\n')
    assert specs["backends"] == [] and specs["transports"] == []
    specs = resolve(tmp_path, registry, '[backends.only]\ntype = "fake"\n')
    assert [s.name for s in specs["backends"]] == ["only"]
    assert specs["transports"] == []


def test_an_empty_config_file_gets_no_defaults(tmp_path, registry):
    assert resolve(tmp_path, registry, "")["backends"] == []


def test_env_override_alone_keeps_the_defaults(registry, monkeypatch):
    monkeypatch.setenv("CONDUCTOR_DEFAULT_MODEL", "m1")
    assert [s.name for s in resolve_components(load_config(), registry)["backends"]] == ["first", "http"]


# ---------------------------------------------------------------- with the real plugin registry


@pytest.fixture
def fake_plugins(monkeypatch):
    """The real registry with only the built-ins and the fake backend plugin; restored after."""
    monkeypatch.setenv("CONDUCTOR_LOAD_PLUGINS", "")
    monkeypatch.setenv("CONDUCTOR_EXTRA_PLUGINS", "conductor_core.testing.fake_plugin")
    plugins.reset_for_tests()
    try:
        yield get_registry()
    finally:
        plugins.reset_for_tests()


def test_resolve_with_the_fake_plugin_and_priority_router(tmp_path, fake_plugins):
    assert set(fake_plugins.backends) == {"fake"} and "priority" in fake_plugins.routers
    specs = resolve(tmp_path, fake_plugins, '[backends.f]\ntype = "fake"\nreply = "yo"\n[router]\ntype = "priority"\n')
    (spec,) = specs["backends"]
    assert spec.registration.factory is FakeBackend
    assert spec.registration.distribution == "conductor_core.testing.fake_plugin"
    assert spec.config == FakeConfig(reply="yo")
    assert specs["routers"][0].registration.factory is PriorityRouter


def test_real_registry_unknown_type_lists_what_is_installed(tmp_path, fake_plugins):
    message = resolve_error(tmp_path, fake_plugins, '[backends.local]\ntype = "ollama"\n')
    assert "unknown backend type 'ollama' (installed: fake;" in message


# ---------------------------------------------------------------- redaction


def test_redaction():
    value = {
        "api_key": "sk-1",
        "default_model": "m",
        "backends": {"x": {"token": "t", "Auth_Token": "t2", "url": "http://h", "max_tokens": 5}},
        "transports": [{"client_secret": "s", "db_password": "p", "path": "/x"}],
        "password": "",  # nothing to hide: shown as empty
        "secret": None,
    }
    assert redacted(value) == {
        "api_key": "***",
        "default_model": "m",
        "backends": {"x": {"token": "***", "Auth_Token": "***", "url": "http://h", "max_tokens": 5}},
        "transports": [{"client_secret": "***", "db_password": "***", "path": "/x"}],
        "password": "",
        "secret": None,
    }
    assert value["api_key"] == "sk-1", "redacted() must not mutate its argument"


def test_redaction_hides_non_string_secrets():
    assert redacted({"secret": {"a": 1}, "token": 1234}) == {"secret": "***", "token": "***"}


# ---------------------------------------------------------------- through the CLI

KEYED_PLUGIN = '''
import msgspec
from conductor_core import hookimpl

class KeyedConfig(msgspec.Struct, forbid_unknown_fields=True):
    url: str
    api_key: str | None = None

class Keyed:
    def __init__(self, name, config):
        self.name, self.config = name, config

@hookimpl
def conductor_register_backends(register):
    register("keyed", Keyed, KeyedConfig)
'''


def run_cli(tmp_path, *args, env=None):
    write(tmp_path / "pp/keyed_plugin.py", KEYED_PLUGIN)
    full_env = {
        **os.environ,
        "HOME": str(tmp_path / "home"),
        "XDG_CONFIG_HOME": str(tmp_path / "xdg"),
        "PYTHONPATH": str(tmp_path / "pp"),
        "CONDUCTOR_LOAD_PLUGINS": "",
        "CONDUCTOR_EXTRA_PLUGINS": "keyed_plugin,conductor_core.testing.fake_plugin",
        **(env or {}),
    }
    return subprocess.run(
        [CONDUCTOR, *args], capture_output=True, text=True, env=full_env, timeout=60, cwd=tmp_path, check=False
    )


def assert_one_line_error(result, *fragments):
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert lines[0].startswith("conductor: config error: ")
    for fragment in fragments:
        assert fragment in lines[0]


@pytest.mark.parametrize(
    "toml, fragments",
    [
        ("[backends.local\n", ["not valid TOML"]),
        ("colour = 'red'\n", ["colour: unknown key"]),
        ("[limits]\nmax_frame_bytes = 'x'\n", ["limits.max_frame_bytes: Expected `int`"]),
        ('log_level = "loud"\n', ["log_level: expected one of"]),
        ('[backends.local]\ntype = "nope"\n', ["backends.local.type: unknown backend type 'nope'"]),
        ('[backends.local]\ntype = "keyed"\nurl = 5\n', ["backends.local.url: Expected `str`, got `int`"]),
        ('[backends.local]\ntype = "keyed"\n', ["backends.local.url: required key is missing"]),
    ],
)
def test_serve_with_a_bad_config_exits_2_with_one_line(tmp_path, toml, fragments):
    path = write(tmp_path / "BAD.toml", toml)
    result = run_cli(tmp_path, "serve", "--config", str(path))
    assert_one_line_error(result, str(path), *fragments)


def test_serve_with_a_missing_config_file(tmp_path):
    result = run_cli(tmp_path, "serve", "--config", str(tmp_path / "missing.toml"))
    assert_one_line_error(result, "missing.toml: no such file")


def test_config_command_errors_the_same_way(tmp_path):
    path = write(tmp_path / "BAD.toml", '[backends.local]\ntype = "keyed"\nurl = 5\n')
    assert_one_line_error(run_cli(tmp_path, "config", "--config", str(path)), "backends.local.url")


def test_config_command_prints_the_effective_config_with_secrets_redacted(tmp_path):
    path = write(
        tmp_path / "c.toml",
        """
        default_model = "m"
        [backends.remote]
        type = "keyed"
        url = "https://api.example"
        api_key = "sk-very-secret"
        [backends.f]
        type = "fake"
        """,
    )
    result = run_cli(tmp_path, "config", "--config", str(path), "--json")
    assert result.returncode == 0, result.stderr
    assert "sk-very-secret" not in result.stdout
    out = json.loads(result.stdout)
    assert out["source"] == str(path)
    config = out["config"]
    assert config["default_model"] == "m"
    assert config["backends"]["remote"] == {"type": "keyed", "url": "https://api.example", "api_key": "***"}
    # the effective config: plugin defaults are filled in
    assert config["backends"]["f"]["type"] == "fake" and config["backends"]["f"]["models"] == ["fake-1"]
    assert config["router"]["type"] == "priority"
    assert config["limits"]["max_frame_bytes"] == 1 << 20

    text = run_cli(tmp_path, "config", "--config", str(path))
    assert text.returncode == 0, text.stderr
    assert text.stdout.startswith(f"# source: {path}\n")
    assert "sk-very-secret" not in text.stdout and '"api_key": "***"' in text.stdout


def test_config_command_without_a_file_shows_the_defaults(tmp_path):
    result = run_cli(tmp_path, "config", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["source"] == "built-in defaults"
