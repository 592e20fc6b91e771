"""OLLAMA_HOST in every form Ollama accepts, and the config table's validation."""

from __future__ import annotations

import msgspec
import pytest

from conductor_core.backends import Timeouts
from conductor_ollama.host import DEFAULT_URL, resolve_url
from conductor_ollama.plugin import OllamaConfig


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("", DEFAULT_URL),
        ("   ", DEFAULT_URL),
        ("example.com", "http://example.com:11434"),
        ("example.com:8080", "http://example.com:8080"),
        (":9000", "http://127.0.0.1:9000"),
        ("0.0.0.0", "http://127.0.0.1:11434"),
        ("0.0.0.0:11435", "http://127.0.0.1:11435"),
        ("http://10.0.0.5:11434", "http://10.0.0.5:11434"),
        ("http://example.com", "http://example.com:80"),
        ("https://example.com", "https://example.com:443"),
        ("https://example.com:8443/ollama/", "https://example.com:8443/ollama"),
        ("HTTP://Box:1234", "http://Box:1234"),
        ("[::1]:7000", "http://[::1]:7000"),
        ("::1", "http://[::1]:11434"),
        ("[::]:7000", "http://[::1]:7000"),
    ],
)
def test_ollama_host_forms(value, expected):
    assert resolve_url(None, {"OLLAMA_HOST": value}) == expected


def test_unset_ollama_host_is_the_default():
    assert resolve_url(None, {}) == DEFAULT_URL


def test_explicit_url_wins_over_environment():
    assert resolve_url("http://a:1", {"OLLAMA_HOST": "b:2"}) == "http://a:1"


@pytest.mark.parametrize("value", ["ftp://x", "host:notaport", "host:70000", "[::1"])
def test_bad_hosts_are_clear_errors(value):
    with pytest.raises(ValueError) as info:
        resolve_url(value)
    assert value.split("://")[0] in str(info.value) or "port" in str(info.value) or "IPv6" in str(info.value)


def test_config_defaults():
    config = msgspec.convert({}, OllamaConfig)
    assert config.url is None and config.keep_alive == "30m" and config.timeouts == Timeouts()
    assert config.preload == [] and config.default_model is None and config.max_connections >= 1


def test_config_from_toml_table():
    config = msgspec.convert(
        {"url": "localhost:9999", "keep_alive": -1, "timeouts": {"connect": 1, "between_chunks": 600},
         "preload": ["llama3.2"], "headers": {"X-A": "b"}},
        OllamaConfig,
    )
    assert config.url == "http://localhost:9999"
    assert config.keep_alive == -1 and config.timeouts.between_chunks == 600


@pytest.mark.parametrize(
    ("table", "fragment"),
    [
        ({"nope": 1}, "unknown field"),
        ({"keep_alive": "soon"}, "keep_alive"),
        ({"keep_alive": True}, "keep_alive"),
        ({"max_connections": 0}, "max_connections"),
        ({"url": "gopher://x"}, "scheme"),
        ({"timeouts": {"between_chunks": 0}}, "between_chunks"),
    ],
)
def test_bad_config_is_a_clear_error(table, fragment):
    with pytest.raises((msgspec.ValidationError, ValueError)) as info:
        msgspec.convert(table, OllamaConfig)
    assert fragment in str(info.value)


@pytest.mark.parametrize("value", ["30m", "1h30m", "10s", "-1", "-1m", 0, 300, 1.5, "0"])
def test_keep_alive_forms_accepted(value):
    assert msgspec.convert({"keep_alive": value}, OllamaConfig).keep_alive == value
