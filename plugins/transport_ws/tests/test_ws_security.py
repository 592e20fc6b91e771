"""Configuration refusals, the token (per start, from config or env, file 0600), the pure
security helpers, auth = "none" on loopback, and TLS."""

from __future__ import annotations

import logging
import shutil
import ssl

import anyio
import anyio.abc
import msgspec
import pytest
from conductor_core.config import Config, ConfigError
from conductor_core.kernel import Conductor
from conductor_core.plugins import get_registry
from conductor_core.protocol import Welcome
from conductor_core.testing.wire import handshake
from conductor_transport_ws.plugin import WsConfig
from conductor_transport_ws.security import (
    OriginPolicy,
    bearer_token,
    host_allowed,
    host_name,
    is_loopback_host,
    normalize_origin,
    page_origins,
    query_token,
    remove_if_ours,
    tokens_equal,
    write_token_file,
)
from websockets.asyncio.client import connect

# ---------------------------------------------------------------- configuration


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.5", "conductor.lan"])
def test_non_loopback_bind_without_tls_is_refused_with_the_reason(host):
    with pytest.raises(msgspec.ValidationError, match="without TLS.*insecure_remote"):
        msgspec.convert({"host": host}, WsConfig)
    assert msgspec.convert({"host": host, "insecure_remote": True}, WsConfig).host == host
    assert msgspec.convert({"host": host, "cert": "c.pem", "key": "k.pem"}, WsConfig).tls


def test_non_loopback_bind_without_token_is_refused_even_with_tls():
    with pytest.raises(msgspec.ValidationError, match="without a token"):
        msgspec.convert({"host": "0.0.0.0", "auth": "none", "insecure_remote": True}, WsConfig)
    assert msgspec.convert({"host": "localhost", "auth": "none"}, WsConfig).auth == "none"


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"allowed_origins": ["*"]}, "not an origin"),
        ({"allowed_origins": ["null"]}, "not an origin"),
        ({"allowed_origins": ["https://a.example/path"]}, "not an origin"),
        ({"cert": "c.pem"}, "both cert and key"),
        ({"token": "short"}, "at least 16"),
        ({"port": 70000}, "port"),
        ({"max_connections": 0}, "max_connections"),
        ({"open_timeout_s": 0}, "open_timeout_s"),
    ],
)
def test_bad_settings_are_refused(table, message):
    with pytest.raises(msgspec.ValidationError, match=message):
        msgspec.convert(table, WsConfig)


def test_refusal_reaches_the_user_as_a_config_error_naming_the_key():
    config = msgspec.convert(
        {"source": "conductor.toml", "backends": {}, "transports": {"lan": {"type": "ws", "host": "0.0.0.0"}}}, Config
    )
    with pytest.raises(ConfigError, match=r"conductor.toml: transports.lan: refusing to listen on '0.0.0.0' without TLS"):
        Conductor.from_config(config, get_registry())


def test_repr_hides_the_token():
    assert "sekrit" not in repr(msgspec.convert({"token": "sekrit-sekrit-sekrit"}, WsConfig))


# ---------------------------------------------------------------- helpers


def test_token_comparison_and_extraction():
    assert tokens_equal("abc", "abc") and not tokens_equal("abd", "abc") and not tokens_equal(None, "abc")
    assert not tokens_equal("ab", "abc")
    assert bearer_token("Bearer  t0k ") == "t0k" and bearer_token("bearer t") == "t"
    assert bearer_token("Basic dXNlcjpw") is None and bearer_token("Bearer ") is None and bearer_token(None) is None
    assert query_token("/?token=a%2Bb&x=1") == "a+b" and query_token("/?x=1") is None and query_token("/") is None


@pytest.mark.parametrize(
    ("header", "name"),
    [("127.0.0.1:8765", "127.0.0.1"), ("[::1]:8765", "::1"), ("LocalHost.", "localhost"), ("Evil.Example:80", "evil.example"), ("", None)],
)
def test_host_name(header, name):
    assert host_name(header) == name


def test_host_allowed_accepts_ip_literals_and_listed_names_only():
    names = frozenset({"localhost", "conductor.lan"})
    assert host_allowed("10.0.0.1:8765", names) and host_allowed("[fe80::1]:1", names)
    assert host_allowed("conductor.lan", names) and host_allowed("localhost:1", names)
    assert not host_allowed("evil.example:8765", names) and not host_allowed(None, names)


def test_loopback_detection():
    assert all(map(is_loopback_host, ["127.0.0.1", "127.8.9.10", "::1", "[::1]", "localhost"]))
    assert not any(map(is_loopback_host, ["0.0.0.0", "::", "", "192.168.1.1", "example.com", "localhost.example.com"]))


def test_origins_are_normalized_and_compared_exactly():
    assert normalize_origin("HTTP://LocalHost:80/") == "http://localhost"
    assert normalize_origin("https://[::1]:8443") == "https://[::1]:8443"
    policy = OriginPolicy(page_origins("http", 8765, "127.0.0.1", []))
    assert policy.allows("http://127.0.0.1:8765") and policy.allows("http://localhost:8765") and policy.allows("http://[::1]:8765")
    for bad in ["null", "http://127.0.0.1:8766", "https://127.0.0.1:8765", "http://127.0.0.1", "", "file://", "http://localhost:8765.evil.example"]:
        assert not policy.allows(bad), bad


def test_token_file_is_private_and_only_our_file_is_removed(tmp_path):
    path = tmp_path / "run" / "ws.token"
    identity = write_token_file(path, "t" * 20)
    assert path.read_text() == "t" * 20 + "\n"
    assert path.stat().st_mode & 0o777 == 0o600 and path.parent.stat().st_mode & 0o777 == 0o700
    write_token_file(path, "u" * 20)  # a successor replaced it
    remove_if_ours(path, identity)
    assert path.exists()


# ---------------------------------------------------------------- token per start, env, auth none


async def test_a_new_random_token_per_start_and_the_url_is_logged(serve_ws, caplog):
    caplog.set_level(logging.INFO, logger="conductor.transport.ws")
    async with serve_ws() as first:
        token = first.token
        assert len(token) >= 40
        assert f"http://127.0.0.1:{first.port}/?token={token}" in caplog.text
        assert first.transport.url == f"http://127.0.0.1:{first.port}/?token={token}"
    async with serve_ws() as second:
        assert second.token != token


async def test_token_from_environment_or_config(serve_ws, ws_client, monkeypatch):
    monkeypatch.setenv("CONDUCTOR_WS_TOKEN", "env-token-0123456789")
    async with serve_ws() as s, ws_client(s) as client:
        assert s.token == "env-token-0123456789"
        assert isinstance(await handshake(client, token="env-token-0123456789"), Welcome)
    async with serve_ws(transport={"token": "config-token-0123456789"}) as s:
        assert s.token == "config-token-0123456789"


async def test_auth_none_on_loopback_needs_no_token_but_still_checks_origin(serve_ws, ws_client, tmp_path):
    async with serve_ws(transport={"auth": "none"}) as s:
        assert s.token is None and s.transport.url == f"http://127.0.0.1:{s.port}/"
        assert not (tmp_path / "ws.token").exists()
        async with ws_client(s) as client:
            assert isinstance(await handshake(client), Welcome)
        from websockets.exceptions import InvalidStatus

        with pytest.raises(InvalidStatus):
            async with ws_client(s, origin="https://evil.example"):
                pass


# ---------------------------------------------------------------- TLS


@pytest.fixture
async def self_signed(tmp_path):
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed (needed to make a test certificate)")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    await anyio.run_process(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)]
    )
    return cert, key


async def test_tls_serves_wss_and_allows_the_https_page_origin(serve_ws, self_signed):
    cert, key = self_signed
    async with serve_ws(transport={"cert": str(cert), "key": str(key)}) as s:
        assert s.transport.url.startswith(f"https://127.0.0.1:{s.port}/?token=")
        context = ssl.create_default_context(cafile=str(cert))
        async with connect(f"wss://127.0.0.1:{s.port}/", ssl=context, origin=f"https://127.0.0.1:{s.port}") as ws:
            await ws.send(f'{{"type":"hello","protocol":1,"token":"{s.token}"}}')
            assert '"welcome"' in await ws.recv()


# ---------------------------------------------------------------- start-up


def test_the_plugin_registers_the_ws_type_with_a_default_instance():
    registration = get_registry().transports["ws"]
    assert registration.distribution == "conductor-transport-ws" and registration.default == {}
    assert registration.config_type is WsConfig


async def test_a_busy_port_is_a_clear_start_up_error():
    from conductor_transport_ws.server import WsTransport

    async with await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0) as busy:
        port = busy.extra(anyio.abc.SocketAttribute.local_port)
        transport = WsTransport("ws", WsConfig(port=port, token_file=""))

        class NotStarted:
            stopping = anyio.Event()

        with pytest.raises(OSError, match=rf"transports.ws: cannot listen on 127.0.0.1:{port}: address already in use"):
            await transport.serve(NotStarted())
