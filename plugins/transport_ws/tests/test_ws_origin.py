"""Who may connect: the Origin allow-list, the Host check against DNS rebinding, the page and
/healthz (no token), all decided at the HTTP handshake before any WebSocket frame."""

from __future__ import annotations

import json

import pytest
from conductor_core.protocol import Welcome
from conductor_core.testing.wire import handshake
from websockets.exceptions import InvalidStatus


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
async def test_the_conductors_own_page_origins_are_allowed(serve_ws, ws_client, host):
    async with serve_ws() as s, ws_client(s, origin=f"http://{host}:{s.port}") as client:
        assert isinstance(await handshake(client, token=s.token), Welcome)


@pytest.mark.parametrize(
    "origin",
    ["https://evil.example", "null", "http://127.0.0.1:1", "https://127.0.0.1:{port}", "http://evil.example:{port}"],
)
async def test_other_origins_are_refused_with_403_before_any_frame(serve_ws, ws_client, origin):
    async with serve_ws() as s:
        with pytest.raises(InvalidStatus) as info:
            # even with the right token in the URL: a hostile page must not get in by guessing it
            async with ws_client(s, origin=origin.format(port=s.port), query=f"?token={s.token}"):
                pass
        assert info.value.response.status_code == 403
        assert b"Origin not allowed" in info.value.response.body
        assert s.transport.connections == 0 and s.backend.requests == 0
        assert s.transport.refused[403] == 1


async def test_configured_extra_origin_is_allowed(serve_ws, ws_client):
    async with serve_ws(transport={"allowed_origins": ["https://Chat.Example.com/"]}) as s:
        async with ws_client(s, origin="https://chat.example.com") as client:
            assert isinstance(await handshake(client, token=s.token), Welcome)
        with pytest.raises(InvalidStatus):
            async with ws_client(s, origin="https://chat.example.com:8443"):
                pass


async def test_no_origin_means_a_non_browser_client_that_must_bring_the_token(serve_ws, ws_client):
    async with serve_ws() as s, ws_client(s) as client:
        assert (await handshake(client)).code == "unauthorized"


@pytest.mark.parametrize("host", ["evil.example:{port}", "evil.example", "127.0.0.1.nip.io:{port}", "localhost.evil.example"])
async def test_dns_rebinding_host_is_refused_for_websocket_and_page(serve_ws, raw_http, host):
    async with serve_ws() as s:
        host = host.format(port=s.port)
        status, _, body = await raw_http.send(s.port, raw_http.upgrade(f"/?token={s.token}", host))
        assert status == 403 and b"Host not allowed" in body
        status, _, _ = await raw_http.send(s.port, raw_http.get("/", host))
        assert status == 403
        assert s.transport.connections == 0 and s.backend.requests == 0


@pytest.mark.parametrize("host", ["127.0.0.1:{port}", "localhost:{port}", "LOCALHOST", "[::1]:{port}", "10.1.2.3:{port}"])
async def test_local_names_and_ip_literals_pass_the_host_check(serve_ws, raw_http, host):
    async with serve_ws() as s:
        status, headers, body = await raw_http.send(s.port, raw_http.get("/", host.format(port=s.port)))
        assert status == 200 and headers["content-type"].startswith("text/html")


async def test_configured_host_name_passes(serve_ws, raw_http):
    async with serve_ws(transport={"allowed_hosts": ["conductor.lan"]}) as s:
        status, _, _ = await raw_http.send(s.port, raw_http.get("/", f"conductor.lan:{s.port}"))
        assert status == 200


async def test_healthz_needs_no_token_and_reveals_nothing(serve_ws, raw_http):
    async with serve_ws() as s:
        status, headers, body = await raw_http.send(s.port, raw_http.get("/healthz", f"127.0.0.1:{s.port}"))
        assert status == 200 and json.loads(body) == {"status": "ok"}
        assert "server" not in headers  # no version banner
        assert s.token not in body.decode()


async def test_page_is_served_without_token_with_a_strict_policy(serve_ws, raw_http):
    async with serve_ws() as s:
        status, headers, body = await raw_http.send(s.port, raw_http.get("/?token=whatever", f"127.0.0.1:{s.port}"))
        assert status == 200 and b"<title>Conductor</title>" in body
        assert s.token.encode() not in body  # the page holds no secret; the URL brings the token
        csp = headers["content-security-policy"]
        assert "default-src 'none'" in csp and "script-src 'sha256-" in csp and "frame-ancestors 'none'" in csp
        assert "unsafe-inline" not in csp
        assert headers["x-frame-options"] == "DENY" and headers["referrer-policy"] == "no-referrer"
        assert headers["x-content-type-options"] == "nosniff"


async def test_unknown_paths_are_404_and_the_page_can_be_disabled(serve_ws, raw_http):
    async with serve_ws(transport={"serve_page": False}) as s:
        host = f"127.0.0.1:{s.port}"
        assert (await raw_http.send(s.port, raw_http.get("/nope", host)))[0] == 404
        assert (await raw_http.send(s.port, raw_http.upgrade(f"/chat?token={s.token}", host)))[0] == 404
        assert (await raw_http.send(s.port, raw_http.get("/", host)))[0] == 404
        assert (await raw_http.send(s.port, raw_http.get("/healthz", host)))[0] == 200


async def test_two_origin_headers_are_a_bad_request(serve_ws, raw_http):
    async with serve_ws() as s:
        request = raw_http.upgrade("/", f"127.0.0.1:{s.port}", Origin=f"http://127.0.0.1:{s.port}")
        request = request.replace(b"\r\n\r\n", b"\r\nOrigin: https://evil.example\r\n\r\n")
        assert (await raw_http.send(s.port, request))[0] == 400
