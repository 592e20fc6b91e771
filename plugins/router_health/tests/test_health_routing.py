"""The HealthRouter on its own: config, model mapping, probes and the probe loop, attempts,
reports and status, with fake backends and a hand-driven clock."""

from __future__ import annotations

import random

import anyio
import msgspec
import pytest

from conductor_core.config import Config, ConfigError
from conductor_core.errors import BackendUnavailable, ModelNotFound, Overloaded
from conductor_core.kernel import Conductor
from conductor_core.plugins import get_registry
from conductor_core.routing import Outcome
from conductor_core.testing.fakes import FakeBackend, FakeConfig, _ensure_fake_plugin
from conductor_router_health import HealthConfig, HealthRouter


def fakes(*specs):
    return [FakeBackend(name, FakeConfig(models=models)) for name, models in specs]


def build(backend_list, clock, **config):
    return HealthRouter(msgspec.convert(config, HealthConfig), backend_list, clock=clock, rng=random.Random(1))


def names(pairs):
    return [(b.name, m) for b, m in pairs]


# ---------------------------------------------------------------- config


def test_config_validation():
    with pytest.raises(ValueError, match="probe_interval_s must be a positive"):
        HealthConfig(probe_interval_s=0)
    with pytest.raises(ValueError, match="backends.x.max_concurrent must be at least 1"):
        msgspec.convert({"backends": {"x": {"max_concurrent": 0}}}, HealthConfig)
    with pytest.raises(ValueError, match="probe_jitter"):
        HealthConfig(probe_jitter=1.5)


def test_unknown_backend_names_are_config_errors_naming_the_key():
    _ensure_fake_plugin()
    config = msgspec.convert(
        {
            "source": "conductor.toml",
            "backends": {"local": {"type": "fake"}},
            "router": {"type": "health", "backends": {"gpu": {"tier": 1}}, "models": {"fast": {"lcoal": "x"}}},
        },
        Config,
    )
    with pytest.raises(ConfigError) as info:
        Conductor.from_config(config, get_registry())
    message = str(info.value)
    assert "router.backends.gpu" in message and "router.models.fast.lcoal" in message
    assert "configured: local" in message


def test_unknown_key_is_a_config_error():
    _ensure_fake_plugin()
    config = msgspec.convert(
        {"source": "conductor.toml", "backends": {"a": {"type": "fake"}}, "router": {"type": "health", "probe_intervall_s": 1}},
        Config,
    )
    with pytest.raises(ConfigError, match="router.probe_intervall_s: unknown key"):
        Conductor.from_config(config, get_registry())


# ---------------------------------------------------------------- candidates


def test_logical_model_names_map_per_backend(clock):
    backends = fakes(("local", ["llama3.2:3b"]), ("embedded", ["smollm2-135m"]), ("cloud", ["gpt"]))
    router = build(backends, clock, models={"fast": {"local": "llama3.2:3b", "embedded": "smollm2-135m"}})
    catalog = {"local": ["llama3.2:3b"], "embedded": ["smollm2-135m"], "cloud": ["gpt"]}
    assert names(router.candidates("fast", catalog)) == [("local", "llama3.2:3b"), ("embedded", "smollm2-135m")]
    assert names(router.candidates("gpt", catalog)) == [("cloud", "gpt")]
    assert names(router.candidates(None, catalog)) == [("local", None), ("embedded", None), ("cloud", None)]
    assert router.candidates("nothing", catalog) == []


def test_unknown_catalog_is_tried_after_known_and_router_refreshes_count(clock):
    backends = fakes(("a", ["m"]), ("b", ["m"]))
    router = build(backends, clock)
    assert names(router.candidates("m", {"a": None, "b": ["m:latest"]})) == [("b", "m"), ("a", "m")]
    router.trackers["a"].set_models(["m"])  # our own refresh knows better than a stale catalog
    assert names(router.candidates("m", {"a": None, "b": ["m"]})) == [("a", "m"), ("b", "m")]


def test_model_not_found_demotes_the_backend_until_its_list_has_the_model(clock):
    backends = fakes(("a", ["m"]), ("b", ["m"]))
    router = build(backends, clock)
    catalog = {"a": ["m"], "b": ["m"]}
    router.candidates("m", catalog)
    router.report(Outcome("a", "m", ModelNotFound("gone")))
    assert names(router.candidates("m", catalog))[0] == ("b", "m")
    assert router.trackers["a"].state == "healthy" and "a" in router._refresh
    router.trackers["a"].set_models(["m"])
    assert names(router.candidates("m", catalog))[0] == ("a", "m")


# ---------------------------------------------------------------- attempts and reports


async def test_attempt_counts_in_flight_and_a_plugin_bug_counts_as_failure(clock):
    (a,) = backends = fakes(("a", ["m"]))
    router = build(backends, clock, failure_threshold=1)
    router.candidates("m", {})
    with pytest.raises(RuntimeError):
        async with router.attempt(a):
            assert router.limiters["a"].in_flight == 1
            raise RuntimeError("bug")
    assert router.limiters["a"].in_flight == 0
    assert router.trackers["a"].state == "down"


async def test_half_open_trial_is_taken_by_one_attempt_and_freed_on_cancel(clock):
    a, b = backends = fakes(("a", ["m"]), ("b", ["m"]))
    router = build(backends, clock, failure_threshold=1, open_s=10, backends={"b": {"tier": 1}})
    router.report(Outcome("a", "m", BackendUnavailable("refused")))
    assert names(router.candidates("m", {}))[0] == ("b", "m")
    clock.advance(10)
    assert names(router.candidates("m", {})) == [("a", "m"), ("b", "m")]  # half-open: tier 0 again
    with anyio.move_on_after(0.01):
        async with router.attempt(a):
            assert router.trackers["a"].rank() == 2  # the trial is taken
            assert names(router.candidates("m", {}))[0] == ("b", "m")
            await anyio.sleep_forever()
    assert router.trackers["a"].breaker.allow()  # cancelled: no verdict


async def test_queue_budget_is_shared_by_every_candidate_of_a_request(clock):
    a, b = backends = fakes(("a", ["m"]), ("b", ["m"]))
    router = build(backends, clock, max_concurrent=1, queue_timeout_s=0.02)
    await router.limiters["a"].acquire(0)
    await router.limiters["b"].acquire(0)
    router.candidates("m", {})
    started = anyio.current_time()
    for backend in (a, b):
        with pytest.raises(Overloaded):
            async with router.attempt(backend):
                pass
    assert anyio.current_time() - started < 0.2  # the second candidate did not wait again


def test_status_view(clock):
    backends = fakes(("a", ["m"]), ("b", ["m"]))
    router = build(backends, clock, backends={"b": {"tier": 2, "max_concurrent": 3}})
    router.candidates("m", {})
    router.report(Outcome("a", "m", None, ttft_s=0.25, tokens_per_s=40.0))
    view = router.status()
    assert view["a"]["state"] == "healthy" and view["a"]["ttft_ms"] == 250.0 and view["a"]["tokens_per_s"] == 40
    assert "loaded_models" not in view["a"] and view["a"]["in_flight"] == 0  # a cannot tell
    assert view["b"]["tier"] == 2 and view["b"]["max_concurrent"] == 3 and view["b"]["queued"] == 0
    assert repr(router) == "<HealthRouter a=healthy, b=healthy>"


# ---------------------------------------------------------------- probes


async def test_probe_reads_health_loaded_models_and_the_model_list(clock):
    a, b, c = backends = fakes(("a", ["m"]), ("b", ["m", "n"]), ("c", ["m"]))

    async def loaded_models():
        return ["n:latest"]

    b.loaded_models = loaded_models
    c.status = lambda: {"loaded_models": ["m"]}
    a.down = True
    router = build(backends, clock, failure_threshold=1)
    await router.probe_now()
    ta, tb, tc = (router.trackers[n] for n in "abc")
    assert ta.state == "down" and ta.last_error == "health: down"
    assert tb.loaded == {"n"} and tb.models == ["m", "n"]
    assert tc.loaded == {"m"} and tc.models == ["m"]
    assert ta.models is None


async def test_hung_probe_times_out_as_a_failure(clock):
    (a,) = backends = fakes(("a", ["m"]))

    async def hang():
        await anyio.sleep_forever()

    a.health = hang
    router = build(backends, clock, probe_timeout_s=0.01, failure_threshold=1)
    await router.probe_now("a")
    assert router.trackers["a"].state == "down"
    assert "timed out after 0.01 s" in router.trackers["a"].last_error


async def test_run_probes_at_once_then_on_schedule_and_backs_off_while_down(clock):
    (a,) = backends = fakes(("a", ["m"]))
    probes: list[float] = []
    probed = anyio.Event()
    health = a.health

    async def counting_health():
        nonlocal probed
        probes.append(clock())
        probed.set()
        probed = anyio.Event()
        return await health()

    a.health = counting_health
    router = build(backends, clock, probe_interval_s=5, probe_jitter=0, failure_threshold=2, open_s=100)

    async def next_probe():
        event = probed
        router.wake()
        with anyio.fail_after(5):
            await event.wait()
        await anyio.wait_all_tasks_blocked()

    async with anyio.create_task_group() as tg:
        await tg.start(router.run)
        await tg.start(router.run)  # a second start is harmless
        with anyio.fail_after(5):
            while not probes:
                await anyio.sleep(0)
        await anyio.wait_all_tasks_blocked()
        assert probes == [1000.0]
        a.down = True
        for expected_gap in (5, 10, 20):  # 5 s, then doubled per failed probe
            clock.advance(expected_gap - 0.001)
            router.wake()
            await anyio.wait_all_tasks_blocked()
            assert len(probes) == len(set(probes))  # not due yet: no probe
            clock.advance(0.001)
            await next_probe()
        assert [round(t - 1000, 3) for t in probes] == [0, 5, 15, 35]
        assert router.trackers["a"].state == "down"
        tg.cancel_scope.cancel()
    assert not router.running


async def test_model_not_found_asks_the_loop_for_a_fresh_model_list(clock):
    (a,) = backends = fakes(("a", ["m"]))
    router = build(backends, clock, probe_interval_s=3600)
    async with anyio.create_task_group() as tg:
        await tg.start(router.run)
        await anyio.wait_all_tasks_blocked()
        a.config.models = ["m", "new"]
        router.candidates("new", {})
        router.report(Outcome("a", "new", ModelNotFound("not yet")))
        await anyio.wait_all_tasks_blocked()
        assert router.trackers["a"].models == ["m", "new"]
        tg.cancel_scope.cancel()
