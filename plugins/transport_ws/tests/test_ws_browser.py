"""The web page in a real headless Chromium (the system's /usr/bin/chromium, driven by
Playwright; no browser is downloaded): streaming, Stop, stats, text-only rendering, and a
hijack attempt from a page on another local origin.

The browser runs in a worker thread with Playwright's sync API, so the conductor's event loop
only runs the conductor (and its slow-callback check sees only the conductor's work). Waits
are Playwright's bounded waits on page state; a screenshot is saved under the test's tmp dir
on failure.
"""

from __future__ import annotations

import os
from contextlib import AsyncExitStack, contextmanager
from pathlib import Path

import anyio
import anyio.abc
import anyio.from_thread
import pytest
from conductor_core.testing.fakes import Script

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
WAIT_MS = 15_000

# On CI the browser is installed by dev.py, so a missing one must fail, not skip silently.
pytestmark = pytest.mark.skipif(
    not os.path.exists(CHROMIUM) and not os.environ.get("CI"),
    reason=f"{CHROMIUM} is missing: install the Debian packages `chromium` and `chromium-driver`",
)


@contextmanager
def browser_page(shots: Path, *extra_args: str):
    """A fresh page in a fresh headless Chromium; screenshot to ``shots/failure.png`` on error."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:  # pragma: no cover - CI installs it
        pytest.fail("the Python package `playwright` is missing: pip install playwright (never `playwright install`)")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[*ARGS, *extra_args], headless=True)
        try:
            page = browser.new_page(viewport={"width": 1000, "height": 700})
            page.set_default_timeout(WAIT_MS)
            try:
                yield page
            except BaseException:
                page.screenshot(path=str(shots / "failure.png"), full_page=True)
                raise
        finally:
            browser.close()


def reply_text(page, n: int) -> str:
    return page.locator(".msg.assistant .text").nth(n).text_content() or ""


async def test_page_streams_a_reply_stops_it_and_renders_model_text_as_text(serve_ws, tmp_path):
    long_reply = [f"word{i} " for i in range(500)]
    async with serve_ws() as s:
        fake = s.backend
        cancelled = fake.cancelled_event

        def scenario() -> dict:
            with browser_page(tmp_path) as page:
                page.goto(s.transport.url)
                page.wait_for_selector("#status[data-state=open]")
                assert "token" not in page.url  # the token left the address bar
                assert "fake-1" in page.locator("#model").inner_text()

                # 1. a whole reply with its stats
                page.fill("#input", "hello there")
                page.press("#input", "Enter")
                page.wait_for_selector(".msg.assistant[data-state=done]")
                assert reply_text(page, 0) == "Hello from the fake backend."
                stats = page.locator(".msg.assistant .stats").nth(0).inner_text()
                assert "fake" in stats and "TTFT" in stats and "tok/s" in stats

                # 2. a slow reply: watch it grow, then Stop it
                anyio.from_thread.run_sync(fake.push, Script(tokens=long_reply, token_delay=0.02))
                page.fill("#input", "count slowly")
                page.click("#send")
                page.wait_for_function("() => (document.querySelectorAll('.msg.assistant .text')[1]?.textContent || '').length > 20")
                first = len(reply_text(page, 1))
                page.wait_for_function(
                    f"() => document.querySelectorAll('.msg.assistant .text')[1].textContent.length > {first}"
                )
                grown = len(reply_text(page, 1))
                assert page.locator(".msg.assistant").nth(1).get_attribute("data-state") == "streaming"
                assert page.locator("#stop").is_enabled()
                page.click("#stop")
                page.wait_for_selector(".msg.assistant[data-state=cancelled]")
                stopped_at = reply_text(page, 1)
                assert page.locator(".msg.assistant .error").nth(1).inner_text() == "stopped"
                assert page.locator("#stop").is_disabled()

                # 3. markup in model text stays text
                hostile = '<b id="injected">bold</b><img src=x onerror="window.pwned=1">'
                anyio.from_thread.run_sync(fake.push, Script(tokens=[hostile[:10], hostile[10:]]))
                page.fill("#input", "say something nasty")
                page.press("#input", "Enter")
                page.wait_for_function("() => document.querySelectorAll('.msg.assistant')[2]?.dataset.state === 'done'")
                assert reply_text(page, 2) == hostile
                assert page.locator("#injected").count() == 0 and page.locator(".msg img").count() == 0
                assert page.evaluate("() => window.pwned") is None
                page.screenshot(path=str(tmp_path / "chat.png"), full_page=False)
                return {"first": first, "grown": grown, "stopped_at": stopped_at}

        seen = await anyio.to_thread.run_sync(scenario)
        with anyio.fail_after(10):
            await cancelled.wait()
        assert seen["first"] < seen["grown"] < len("".join(long_reply))  # it streamed
        assert len(seen["stopped_at"]) < len("".join(long_reply))  # and stopped early
        assert fake.cancelled == 1 and fake.active == 0 and fake.completed == 2


async def _serve_attacker_page(html: bytes, *, task_status=anyio.TASK_STATUS_IGNORED) -> None:
    """A tiny HTTP server on another local port: every request gets ``html``."""
    async with await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0) as listener:
        task_status.started(listener.extra(anyio.abc.SocketAttribute.local_port))

        async def handle(stream) -> None:
            async with stream:
                data = b""
                while b"\r\n\r\n" not in data:
                    data += await stream.receive()
                head = b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nConnection: close\r\n"
                await stream.send(head + b"Content-Length: %d\r\n\r\n" % len(html) + html)

        await listener.serve(handle)


ATTACK = """<!doctype html><title>innocent page</title><script>
window.results = [];
function attempt(url) {
  return new Promise((resolve) => {
    const log = [];
    let ws;
    try { ws = new WebSocket(url); } catch (e) { resolve(["throw:" + e.name]); return; }
    ws.onopen = () => {
      log.push("open");
      ws.send(JSON.stringify({type: "hello", protocol: 1, token: "%(token)s"}));
      ws.send(JSON.stringify({type: "chat", id: "x", content: "exfiltrate"}));
    };
    ws.onmessage = (e) => log.push("message");
    ws.onerror = () => log.push("error");
    ws.onclose = (e) => { log.push("close:" + e.code); resolve(log); };
  });
}
(async () => {
  window.results.push(await attempt("ws://127.0.0.1:%(port)d/"));
  window.results.push(await attempt("ws://localhost:%(port)d/?token=%(token)s"));
  window.done = true;
})();
</script>"""


async def test_a_page_from_another_local_origin_cannot_connect(serve_ws, tmp_path):
    async with serve_ws() as s, anyio.create_task_group() as tg:
        # the worst case: the attacker even knows the token
        html = (ATTACK % {"port": s.port, "token": s.token}).encode()
        attacker_port = await tg.start(_serve_attacker_page, html)

        def scenario() -> list:
            with browser_page(tmp_path) as page:
                page.goto(f"http://127.0.0.1:{attacker_port}/")
                page.wait_for_function("() => window.done === true")
                return page.evaluate("() => window.results")

        results = await anyio.to_thread.run_sync(scenario)
        tg.cancel_scope.cancel()
    assert results == [["error", "close:1006"], ["error", "close:1006"]]  # never opened
    assert s.transport.refused[403] == 2
    assert s.backend.requests == 0 and not s.conductor.connections and s.transport.connections == 0


async def test_dns_rebinding_in_a_real_browser_is_refused(serve_ws, tmp_path):
    async with serve_ws() as s:

        def scenario() -> tuple[int, str]:
            # rebind.test resolves to 127.0.0.1, as an attacker's DNS would make it after page load
            with browser_page(tmp_path, "--host-resolver-rules=MAP rebind.test 127.0.0.1") as page:
                response = page.goto(f"http://rebind.test:{s.port}/?token={s.token}")
                return response.status, page.content()

        status, content = await anyio.to_thread.run_sync(scenario)
    assert status == 403 and "Host not allowed" in content
    assert s.backend.requests == 0


async def test_page_reconnects_after_a_restart_and_shows_errors_clearly(serve_ws, tmp_path):
    token = "a-fixed-token-that-survives-the-restart"
    connected, disconnected, finished = anyio.Event(), anyio.Event(), anyio.Event()
    seen: dict[str, str] = {}

    def scenario(url: str) -> None:
        with browser_page(tmp_path) as page:
            page.goto(url)
            page.wait_for_selector("#status[data-state=open]")
            anyio.from_thread.run_sync(connected.set)
            page.wait_for_selector("#status[data-state=closed]")  # the conductor went away
            seen["banner"] = page.locator("#banner").inner_text()
            anyio.from_thread.run_sync(disconnected.set)
            page.wait_for_selector("#status[data-state=open]")  # ... and came back: reconnected
            seen["banner_after"] = page.locator("#banner").is_visible() and page.locator("#banner").inner_text()
            page.fill("#input", "are you there?")
            page.press("#input", "Enter")
            page.wait_for_selector(".msg.assistant[data-state=error]")
            seen["error"] = page.locator(".msg.assistant .error").first.inner_text()

    async with anyio.create_task_group() as tg:
        async with AsyncExitStack() as first_run:
            first = await first_run.enter_async_context(serve_ws(transport={"token": token}))
            port, url = first.port, first.transport.url

            async def browse() -> None:
                try:
                    await anyio.to_thread.run_sync(scenario, url)
                finally:
                    finished.set()

            tg.start_soon(browse)
            with anyio.fail_after(30):
                await connected.wait()
        # the first conductor has stopped (leaving the stack shut it down)
        with anyio.fail_after(30):
            await disconnected.wait()
        async with serve_ws(transport={"token": token, "port": port}, backend={"fail_before_first": "unavailable"}) as second:
            with anyio.fail_after(60):
                await finished.wait()
            assert second.backend.requests >= 1
    assert "shutting down or restarting" in seen["banner"] and "Reconnecting in" in seen["banner"]
    assert not seen["banner_after"]  # the banner goes once the conductor is back
    assert "backend_unavailable" in seen["error"] and "try again" in seen["error"]


async def test_page_with_a_wrong_token_says_so_and_stops_retrying(serve_ws, tmp_path):
    async with serve_ws() as s:

        def scenario() -> tuple[str, str, bool]:
            with browser_page(tmp_path) as page:
                page.goto(f"http://127.0.0.1:{s.port}/?token=not-the-token")
                page.wait_for_selector("#status[data-state=error]")
                return page.locator("#banner").inner_text(), page.locator("#status").inner_text(), page.locator("#send").is_disabled()

        banner, status, send_disabled = await anyio.to_thread.run_sync(scenario)
    assert "refused this page" in banner and "?token=" in banner
    assert status == "not authorized" and send_disabled
    assert s.backend.requests == 0


async def test_page_draws_the_avatar_and_follows_its_mood(serve_ws, tmp_path):
    async with serve_ws() as s:

        def scenario() -> dict:
            with browser_page(tmp_path) as page:
                page.goto(s.transport.url)
                page.wait_for_selector("#status[data-state=open]")
                page.wait_for_selector("#avatar[data-mood=calm] pre[data-key]", state="attached")
                calm = page.locator("#avatar pre").get_attribute("data-key")
                tokens = ["Sure! [yo", "lla:mood hap", "py][yolla:wa", "ve] done"]  # tags split across tokens
                anyio.from_thread.run_sync(s.backend.push, Script(tokens=tokens))
                page.fill("#input", "cheer up")
                page.press("#input", "Enter")
                page.wait_for_selector(".msg.assistant[data-state=done]")
                page.wait_for_selector("#avatar[data-mood=happy] pre[data-key*=happy]", state="attached")
                cells = page.locator("#avatar pre span").count()
                coloured = page.evaluate("() => [...document.querySelectorAll('#avatar pre span')].filter(s => s.style.color).length")
                page.screenshot(path=str(tmp_path / "avatar.png"))
                return {"calm": calm, "text": reply_text(page, 0), "cells": cells, "coloured": coloured,
                        "visible": page.locator("#avatar").is_visible()}

        seen = await anyio.to_thread.run_sync(scenario)
    assert "calm" in seen["calm"]
    assert seen["text"] == "Sure!  done"  # the kernel removed the tags, whatever the split
    assert seen["cells"] == 12 * 6 and seen["coloured"] > 0 and seen["visible"]  # the small sprite
