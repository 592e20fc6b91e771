"""The health router inside a running kernel, with fake backends, through the wire protocol.

Time is the hand-driven ``clock`` fixture (every HealthRouter built during a test reads it);
probes are triggered with ``router.probe_now()`` rather than waited for, so no test sleeps.
"""

from __future__ import annotations

import logging

import anyio
import pytest

from conductor_core.errors import BackendRateLimited, ErrorCode
from conductor_core.protocol import Chat, Done, Error, HistoryRequest, StatusRequest, Token
from conductor_core.testing.fakes import Script, running_conductor
from conductor_core.testing.wire import collect, handshake


def config(*names, router=None, **backend_extra):
    backends = {name: {"type": "fake", "models": ["m"], "reply": f"from {name}"} for name in names}
    for name, extra in backend_extra.items():
        backends[name].update(extra)
    return {"backends": backends, "router": {"type": "health", "probe_interval_s": 3600, **(router or {})}}


async def ask(client, chat_id, conversation=None, model="m"):
    """One chat; each in its own conversation unless told (so affinity plays no part)."""
    await client.send(Chat(chat_id, "hi", conversation=conversation or chat_id, model=model))
    with anyio.fail_after(10):
        text, _, final = await collect(client, chat_id)
    return text, final


async def probes_settled(router):
    """The router probes every backend once at start-up, in the background; a test that counts
    failures must not race that first (successful) probe."""
    with anyio.fail_after(5):
        while any(t.probing for t in router.trackers.values()):
            await anyio.sleep(0.001)


def fail_next(backend, exc):
    """The backend's next chat raises ``exc`` before any token (then it behaves again)."""
    chat = backend.chat

    async def failing(request):
        backend.chat = chat
        backend.requests += 1
        raise exc
        yield  # pragma: no cover

    backend.chat = failing


@pytest.fixture
def router_log(caplog):
    caplog.set_level(logging.INFO, "conductor.router.health")
    return lambda: [r.getMessage() for r in caplog.records if r.name == "conductor.router.health"]


async def test_backend_killed_mid_run_breaker_opens_and_it_is_used_again_after_cool_down(clock, router_log):
    cfg = config("a", "b", router={"failure_threshold": 3, "open_s": 30, "backends": {"b": {"tier": 1}}})
    async with running_conductor(cfg) as kernel, kernel.connect() as client:
        a, b = (kernel.conductor.backends[n] for n in "ab")
        router = kernel.conductor.router
        await handshake(client)
        await probes_settled(kernel.conductor.router)
        text, final = await ask(client, "1")
        assert text == "from a" and final.stats.backend == "a"

        a.down = True  # killed mid-run
        before = a.requests
        for i in range(6):
            text, final = await ask(client, f"down{i}")
            assert isinstance(final, Done) and text == "from b"  # every request still succeeds
        assert a.requests - before == 3  # after 3 failures the breaker keeps traffic away
        assert final.stats.attempts == 1
        view = router.status()["a"]
        assert view["state"] == "down" and view["breaker"] == "open" and "down" in view["last_error"]

        a.down = False  # back, but the cool-down is not over
        clock.advance(29)
        _, final = await ask(client, "cool")
        assert final.stats.backend == "b"
        clock.advance(1)  # half-open: the next request is the trial
        text, final = await ask(client, "trial")
        assert text == "from a" and final.stats.backend == "a"
        assert router.status()["a"]["state"] == "healthy"
        assert router_log() == [
            "backend a: healthy -> degraded (fake backend a is down)",
            "backend a: degraded -> down (fake backend a is down)",
            "backend a: down -> degraded (fake backend a is down)",
            "backend a: degraded -> healthy",
        ]

        await client.send(StatusRequest())  # the status reply carries the router's view
        status = await client.receive()
        assert status.router == "health"
        assert status.backends["a"]["router"]["state"] == "healthy"
        assert status.backends["b"]["router"]["tier"] == 1


async def test_recovery_by_probe_after_cool_down(clock):
    cfg = config("a", "b", router={"failure_threshold": 1, "open_s": 30, "backends": {"b": {"tier": 1}}})
    async with running_conductor(cfg) as kernel, kernel.connect() as client:
        a = kernel.conductor.backends["a"]
        router = kernel.conductor.router
        await handshake(client)
        await probes_settled(kernel.conductor.router)
        a.down = True
        _, final = await ask(client, "1")
        assert final.stats.backend == "b" and router.trackers["a"].state == "down"
        await router.probe_now("a")
        assert router.trackers["a"].state == "down"
        a.down = False
        await router.probe_now("a")  # up, but still cooling down
        assert router.trackers["a"].state == "down"
        clock.advance(30)
        await router.probe_now("a")  # the half-open trial, by probe
        assert router.trackers["a"].state == "healthy"
        _, final = await ask(client, "2")
        assert final.stats.backend == "a"


async def test_flapping_backend_loses_traffic_and_is_logged_once(clock, router_log):
    async with running_conductor(config("a", "b")) as kernel, kernel.connect() as client:
        a, b = (kernel.conductor.backends[n] for n in "ab")
        router = kernel.conductor.router
        await handshake(client)
        await probes_settled(kernel.conductor.router)
        for i in range(4):  # a fails every other time it is asked
            a.push(Script(fail_before_first="unavailable"), Script())
        served = []
        for i in range(8):
            text, final = await ask(client, f"c{i}")
            assert isinstance(final, Done)
            served.append(final.stats.backend)
            clock.advance(1)
        assert router.trackers["a"].state == "degraded" and router.trackers["a"].breaker.state == "closed"
        assert served.count("b") > served.count("a")
        assert router_log().count("backend a: healthy -> degraded (fake backend a refused the connection)") == 1
        assert len(router_log()) == 1
        clock.advance(600)  # errors fade: a is healthy again without any traffic
        assert router.trackers["a"].state == "healthy"


async def test_rate_limited_backend_cools_down_for_retry_after(clock):
    cfg = config("a", "b", router={"backends": {"b": {"tier": 1}}})
    async with running_conductor(cfg) as kernel, kernel.connect() as client:
        a = kernel.conductor.backends["a"]
        router = kernel.conductor.router
        await handshake(client)
        await probes_settled(kernel.conductor.router)
        fail_next(a, BackendRateLimited("429 Too Many Requests", retry_after_ms=20_000))
        text, final = await ask(client, "1")
        assert text == "from b" and final.stats.attempts == 2  # fell back at once
        assert router.status()["a"]["cooldown_s"] == 20
        asked = a.requests
        for step in (5, 5, 9.9):
            clock.advance(step)
            _, final = await ask(client, f"wait{step}")
            assert final.stats.backend == "b"
        assert a.requests == asked  # not asked during the cool-down
        clock.advance(0.1)
        _, final = await ask(client, "after")
        assert final.stats.backend == "a"


async def test_rate_limit_without_retry_after_uses_the_default_cool_down(clock):
    cfg = config("a", "b", router={"rate_limit_cooldown_s": 7, "backends": {"b": {"tier": 1}}})
    async with running_conductor(cfg) as kernel, kernel.connect() as client:
        a = kernel.conductor.backends["a"]
        await handshake(client)
        await probes_settled(kernel.conductor.router)
        fail_next(a, BackendRateLimited("429"))
        await ask(client, "1")
        assert kernel.conductor.router.status()["a"]["cooldown_s"] == 7


async def test_slow_backend_loses_traffic_to_a_fast_one(clock):
    cfg = config("slow", "fast", slow={"ttft_ms": 40})
    async with running_conductor(cfg) as kernel, kernel.connect() as client:
        await handshake(client)
        await probes_settled(kernel.conductor.router)
        served = [(await ask(client, f"c{i}"))[1].stats.backend for i in range(6)]
        assert served[:2] == ["slow", "fast"]  # each tried once (no TTFT yet counts as fast)
        assert served[2:] == ["fast"] * 4
        view = kernel.conductor.router.status()
        assert view["slow"]["ttft_ms"] > view["fast"]["ttft_ms"]


async def test_backend_with_the_model_loaded_is_preferred(clock):
    async with running_conductor(config("cold", "hot")) as kernel, kernel.connect() as client:
        cold, hot = (kernel.conductor.backends[n] for n in ("cold", "hot"))

        async def nothing_loaded():
            return []

        async def m_loaded():
            return ["m:latest"]

        cold.loaded_models = nothing_loaded
        hot.loaded_models = m_loaded
        await kernel.conductor.router.probe_now()
        await handshake(client)
        await probes_settled(kernel.conductor.router)
        _, final = await ask(client, "1")
        assert final.stats.backend == "hot"
        assert kernel.conductor.router.status()["hot"]["loaded_models"] == ["m"]


async def test_conversation_stays_on_its_backend_while_healthy(clock):
    async with running_conductor(config("a", "b")) as kernel, kernel.connect() as client:
        a, b = (kernel.conductor.backends[n] for n in "ab")
        await handshake(client)
        await probes_settled(kernel.conductor.router)
        a.push(Script(ttft=0.03))
        _, first = await ask(client, "x1", conversation="x")
        assert first.stats.backend == "a"
        _, other = await ask(client, "y1", conversation="y")
        assert other.stats.backend == "b"  # b looks faster now
        for i in range(3):
            _, final = await ask(client, f"x{i + 2}", conversation="x")
            assert final.stats.backend == "a"  # ... but x's KV cache is on a
            _, final = await ask(client, f"y{i + 2}", conversation="y")
            assert final.stats.backend == "b"
        a.down = True  # a fails: x moves to b and stays there
        _, final = await ask(client, "x9", conversation="x")
        assert final.stats.backend == "b" and final.stats.attempts == 2
        a.down = False
        _, final = await ask(client, "x10", conversation="x")
        assert final.stats.backend == "b"


async def test_all_unhealthy_are_still_tried_and_total_failure_is_explained(clock, router_log):
    cfg = config("a", "b", router={"failure_threshold": 1, "open_s": 30})
    async with running_conductor(cfg) as kernel, kernel.connect() as client:
        a, b = (kernel.conductor.backends[n] for n in "ab")
        await handshake(client)
        await probes_settled(kernel.conductor.router)
        a.down = b.down = True
        _, final = await ask(client, "1")
        assert isinstance(final, Error) and final.code == ErrorCode.BACKEND_UNAVAILABLE and final.retryable
        assert final.message == (
            "every backend tried for model 'm' failed (a: fake backend a is down; b: fake backend b is down)"
        )
        status = kernel.conductor.router.status()
        assert status["a"]["state"] == status["b"]["state"] == "down"
        b.down = False  # back before any cool-down ended: the bypass finds it
        text, final = await ask(client, "2")
        assert text == "from b" and isinstance(final, Done)
        assert "every backend for model 'm' is unhealthy; trying them anyway" in router_log()
        assert kernel.conductor.router.trackers["b"].state == "healthy"


async def test_queue_timeout_is_overloaded_with_retry_after(clock):
    cfg = config("a", router={"max_concurrent": 1, "queue_timeout_s": 0.05})
    async with running_conductor(cfg) as kernel, kernel.connect() as busy, kernel.connect() as late:
        a = kernel.conductor.backends["a"]
        await handshake(busy)
        await handshake(late)
        a.push(Script(tokens=["one", " two"], hang_after=1))
        await busy.send(Chat("long", "hi", model="m"))
        assert isinstance(await busy.receive(), Token)
        _, final = await ask(late, "queued")
        assert isinstance(final, Error) and final.code == ErrorCode.OVERLOADED
        assert final.retryable and final.retry_after_ms and "limit of 1 concurrent" in final.message
        assert a.requests == 1
        assert kernel.conductor.router.status()["a"]["in_flight"] == 1


async def test_queued_request_is_served_when_a_slot_frees(clock):
    cfg = config("a", router={"max_concurrent": 1, "queue_timeout_s": 30})
    async with running_conductor(cfg) as kernel, kernel.connect() as first, kernel.connect() as second:
        a = kernel.conductor.backends["a"]
        await handshake(first)
        await handshake(second)
        gate = anyio.Event()
        chat = a.chat

        async def gated(request):
            await gate.wait()
            async for item in chat(request):
                yield item

        a.chat = gated
        await first.send(Chat("1", "hi", model="m"))
        await anyio.wait_all_tasks_blocked()
        await second.send(Chat("2", "hi", model="m"))
        await anyio.wait_all_tasks_blocked()
        assert kernel.conductor.router.status()["a"]["queued"] == 1
        gate.set()
        for client, chat_id in ((first, "1"), (second, "2")):
            with anyio.fail_after(10):
                _, _, final = await collect(client, chat_id)
            assert isinstance(final, Done)
        assert kernel.conductor.router.status()["a"]["in_flight"] == 0


async def test_full_backend_spills_over_to_a_free_one(clock):
    cfg = config("a", "b", router={"backends": {"a": {"max_concurrent": 1}, "b": {"tier": 1}}})
    async with running_conductor(cfg) as kernel, kernel.connect() as busy, kernel.connect() as other:
        a = kernel.conductor.backends["a"]
        await handshake(busy)
        await handshake(other)
        a.push(Script(tokens=["one", " two"], hang_after=1))
        await busy.send(Chat("long", "hi", model="m"))
        assert isinstance(await busy.receive(), Token)
        text, final = await ask(other, "2")
        assert text == "from b" and final.stats.attempts == 1


async def test_failure_after_first_token_is_an_error_without_duplicated_text(clock):
    async with running_conductor(config("a", "b")) as kernel, kernel.connect() as client:
        a, b = (kernel.conductor.backends[n] for n in "ab")
        await handshake(client)
        await probes_settled(kernel.conductor.router)
        a.push(Script(tokens=list("abcdef"), fail_after=3))
        text, final = await ask(client, "c")
        assert isinstance(final, Error) and final.code == ErrorCode.BACKEND_ERROR
        assert text == "abc" and b.requests == 0
        await client.send(HistoryRequest("c"))
        history = await client.receive()
        assert history.messages[-1].content == "abc" and history.messages[-1].interrupted
        tracker = kernel.conductor.router.trackers["a"]
        assert tracker.breaker.failures == 1 and "failed after 3 tokens" in tracker.last_error


async def test_logical_model_name_through_the_kernel(clock):
    cfg = {
        "backends": {
            "local": {"type": "fake", "models": ["llama3.2:3b"], "reply": "from local"},
            "embedded": {"type": "fake", "models": ["smollm2-135m"], "reply": "from embedded"},
        },
        "router": {"type": "health", "probe_interval_s": 3600, "models": {"fast": {"local": "llama3.2:3b", "embedded": "smollm2-135m"}}},
    }
    async with running_conductor(cfg) as kernel, kernel.connect() as client:
        local, embedded = (kernel.conductor.backends[n] for n in ("local", "embedded"))
        await handshake(client)
        await probes_settled(kernel.conductor.router)
        text, final = await ask(client, "1", model="fast")
        assert text == "from local" and final.stats.model == "llama3.2:3b"
        assert local.requests_seen[-1].model == "llama3.2:3b"
        local.down = True
        text, final = await ask(client, "2", model="fast")
        assert text == "from embedded" and embedded.requests_seen[-1].model == "smollm2-135m"
