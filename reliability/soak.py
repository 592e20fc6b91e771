"""The soak: many clients chatting through a real ``conductor serve`` against flaky backends.

Three processes: the flaky emulators (:mod:`reliability.flaky`, two Ollama instances in one
child), ``conductor serve`` (Unix socket and WebSocket transports, health router), and this
one, which runs every client on one event loop. Each client loops: send a chat with a fresh
prompt, read the reply, check it, pause a little. A reply that ends in ``done`` must equal
:func:`~reliability.flaky.expected_reply` exactly; one that ends in ``error`` must carry a code
a backend failure explains, and whatever text arrived before it must be a prefix of the
expected reply (nothing silently truncated, duplicated or garbled). A reply that neither
finishes nor fails within :data:`REPLY_DEADLINE_S` is counted as stuck.

Every ``--sample-s`` seconds a separate client asks ``status`` (its round trip is recorded)
and the conductor's open fds (``/proc/PID/fd``) and RSS are read; ``status.tasks`` gives the
event loop's task count. After warm-up (the first quarter of the run) the RSS slope is a
least-squares fit. At the end every client leaves, the fds and tasks are read again (they must
fall back to the idle baseline), and the conductor gets SIGTERM (exit 0, socket removed).
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import statistics
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import anyio
import httpx

from conductor_core.client import Client, ClientError, connect_unix
from conductor_core.protocol import decode_server, encode

from .flaky import expected_reply, reply_digest
from .procs import PYTHON, Proc, conductor_config, free_port, open_fds, rss_kib, wait_tcp, wait_unix

__all__ = ["SoakReport", "WsClientChannel", "run_soak"]

WS_TOKEN = "soak-token-0123456789abcdef"
REPLY_DEADLINE_S = 60.0
NO_UVLOOP = Path(__file__).resolve().parent / "_no_uvloop"
# codes a client may get when a backend fails (docs/protocol.md, "Errors")
BACKEND_CODES = {"backend_error", "backend_unavailable", "rate_limited", "overloaded"}


class WsClientChannel:
    """A :class:`~conductor_core.client.ClientChannel` over a ``websockets`` connection (JSON
    text frames, as a browser speaks)."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws

    async def send(self, message: Any) -> None:
        from websockets.exceptions import ConnectionClosed

        try:
            await self.ws.send(encode(message, "json").decode())
        except ConnectionClosed:
            raise anyio.BrokenResourceError from None

    async def receive(self) -> Any:
        from websockets.exceptions import ConnectionClosed

        try:
            data = await self.ws.recv()
        except ConnectionClosed:
            raise anyio.EndOfStream from None
        return decode_server(data, "json")

    async def aclose(self) -> None:
        await self.ws.close()


def connect_ws(port: int, token: str) -> Client:
    from websockets.asyncio.client import connect

    async def open_channel() -> WsClientChannel:
        try:
            ws = await connect(f"ws://127.0.0.1:{port}/", compression=None, open_timeout=30, max_size=None)
        except OSError as exc:
            raise ClientError("connection_closed", f"websocket connect failed: {exc}") from None
        return WsClientChannel(ws)

    return Client(open_channel, token=token, surface="soak-ws")


@dataclass
class SoakReport:
    clients: int = 0
    unix_clients: int = 0
    ws_clients: int = 0
    duration_s: float = 0.0
    fault_rate: float = 0.0
    replies: int = 0
    completed: int = 0
    failed: dict[str, int] = field(default_factory=dict)  # by error code
    timeouts_named: int = 0  # backend_error replies whose message names the timeout
    mismatches: int = 0  # completed, but not the expected text
    corrupt_partials: int = 0  # failed, and the text before the error is not a prefix
    stuck: int = 0  # neither done nor error within REPLY_DEADLINE_S
    unexpected: dict[str, int] = field(default_factory=dict)  # error codes no backend fault explains
    reconnects: int = 0
    tokens_checked: int = 0
    faults_injected: dict[str, int] = field(default_factory=dict)
    backend_requests: int = 0
    fds: dict[str, int] = field(default_factory=dict)  # idle, warm, peak, end, after
    tasks: dict[str, int | None] = field(default_factory=dict)
    rss_kib: dict[str, int] = field(default_factory=dict)
    rss_slope_kib_per_min: float | None = None
    status_ms: dict[str, float] = field(default_factory=dict)  # p50, p99, max
    status_failures: int = 0
    samples: list[dict[str, Any]] = field(default_factory=list)
    slow_callbacks: int | None = None  # loop-debug only: "Executing ... took" lines
    exit_code: int | None = None
    socket_removed: bool | None = None
    examples: list[str] = field(default_factory=list)

    def ok(self) -> bool:
        return (
            self.mismatches == 0 and self.corrupt_partials == 0 and self.stuck == 0 and not self.unexpected
            and self.exit_code == 0 and bool(self.socket_removed) and self.completed > 0
        )

    def summary(self) -> str:
        lines = [
            f"soak: {self.clients} clients ({self.unix_clients} unix, {self.ws_clients} ws) for {self.duration_s:.0f} s, "
            f"fault rate {self.fault_rate:g}",
            f"  replies {self.replies}: completed {self.completed}, failed {sum(self.failed.values())} {dict(self.failed)}"
            f" (timeouts named {self.timeouts_named})",
            f"  checks: mismatches {self.mismatches}, corrupt partials {self.corrupt_partials}, stuck {self.stuck}, "
            f"unexpected {dict(self.unexpected)}, reconnects {self.reconnects}, tokens checked {self.tokens_checked}",
            f"  backends: {self.backend_requests} generation requests, faults injected {dict(self.faults_injected)}",
            f"  fds {self.fds}; tasks {self.tasks}",
            f"  rss KiB {self.rss_kib}; slope after warm-up {self.rss_slope_kib_per_min} KiB/min",
            f"  status round trip ms {self.status_ms} (failures {self.status_failures}); slow callbacks {self.slow_callbacks}",
            f"  SIGTERM exit {self.exit_code}, socket removed {self.socket_removed}",
        ]
        lines += [f"  example: {e}" for e in self.examples[:5]]
        return "\n".join(lines)


class _Tally:
    def __init__(self, report: SoakReport) -> None:
        self.r = report
        self.failed: Counter[str] = Counter()
        self.unexpected: Counter[str] = Counter()

    def example(self, text: str) -> None:
        if len(self.r.examples) < 20:
            self.r.examples.append(text)


async def _one_client(index: int, kind: str, tally: _Tally, stop: anyio.Event, sock: Path, ws_port: int,
                      rng: random.Random) -> None:
    r = tally.r
    n = 0
    while not stop.is_set():
        client = connect_unix(sock, surface="soak-unix") if kind == "unix" else connect_ws(ws_port, WS_TOKEN)
        try:
            async with client:
                while not stop.is_set():
                    n += 1
                    prompt = f"client {index} ({kind}) message {n}: {rng.random():.6f}"
                    expected = expected_reply(prompt)
                    parts: list[str] = []
                    r.replies += 1
                    try:
                        with anyio.fail_after(REPLY_DEADLINE_S):
                            async with client.chat(prompt) as reply:
                                async for piece in reply:
                                    parts.append(piece)
                    except TimeoutError:
                        r.stuck += 1
                        tally.example(f"stuck: {prompt!r} after {len(parts)} pieces")
                        break  # this connection's state is unknown: start a new one
                    except ClientError as exc:
                        text = "".join(parts)
                        if exc.code in BACKEND_CODES:
                            tally.failed[exc.code] += 1
                            if exc.code == "backend_error" and ("timeout" in exc.message or "sent nothing" in exc.message):
                                r.timeouts_named += 1
                            if not expected.startswith(text):
                                r.corrupt_partials += 1
                                tally.example(f"corrupt partial ({exc.code}): {reply_digest(text)} for {prompt!r}")
                            await anyio.sleep(rng.uniform(0.05, 0.3))  # a polite client backs off a little
                            continue
                        tally.unexpected[exc.code] += 1
                        tally.example(f"unexpected {exc.code}: {exc.message}")
                        break
                    text = "".join(parts)
                    if text == expected:
                        r.completed += 1
                        r.tokens_checked += len(parts)
                    else:
                        r.mismatches += 1
                        tally.example(f"mismatch: got {reply_digest(text)} want {reply_digest(expected)} for {prompt!r}")
                    await anyio.sleep(rng.uniform(0.0, 0.2))
        except ClientError as exc:
            if stop.is_set():
                return
            tally.unexpected[f"connect:{exc.code}"] += 1
            tally.example(f"connect failed ({kind}): {exc}")
        if not stop.is_set():
            r.reconnects += 1
            await anyio.sleep(0.2)


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _slope_per_min(points: list[tuple[float, float]]) -> float | None:
    if len(points) < 3:
        return None
    xs = [p[0] for p in points]
    ys = [p[1] for p in points]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    den = sum((x - mx) ** 2 for x in xs)
    if den == 0:
        return None
    return round(sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / den * 60, 1)


async def _sample(pid: int, probe: Client, report: SoakReport, latencies: list[float], t0: float) -> dict[str, Any]:
    started = time.perf_counter()
    tasks = sessions = active = None
    try:
        with anyio.fail_after(10):
            status = await probe.status()
        latencies.append((time.perf_counter() - started) * 1000)
        tasks, sessions, active = status.tasks, status.sessions, status.active_chats
    except (TimeoutError, ClientError):
        report.status_failures += 1
    return {
        "t": round(time.monotonic() - t0, 2),
        "fds": open_fds(pid),
        "rss_kib": rss_kib(pid),
        "tasks": tasks,
        "sessions": sessions,
        "active_chats": active,
        "status_ms": round(latencies[-1], 2) if latencies else None,
    }


async def run_soak(*, clients: int, duration_s: float, fault_rate: float = 0.02, ws_fraction: float = 0.5,
                   seed: int = 1, sample_s: float = 2.0, loop_debug: bool = False, token_delay_ms: float = 5.0,
                   between_chunks_s: float = 2.0, workdir: Path | None = None, keep_uvloop: bool = False,
                   log=print) -> SoakReport:
    """Run one soak; returns the report (never raises for a failed check: read ``report.ok()``)."""
    report = SoakReport(clients=clients, duration_s=duration_s, fault_rate=fault_rate)
    report.ws_clients = int(round(clients * ws_fraction))
    report.unix_clients = clients - report.ws_clients
    tally = _Tally(report)
    if workdir is not None:
        workdir.mkdir(parents=True, exist_ok=True)
    tmp = workdir or Path(tempfile.mkdtemp(prefix="csoak-"))
    procs: list[Proc] = []
    try:
        emu = Proc([PYTHON, "-m", "reliability.flaky", "--backends", "2", "--fault-rate", str(fault_rate),
                    "--seed", str(seed), "--token-delay-ms", str(token_delay_ms)],
                   name="emulators", log=tmp / "emulators.log", stdout_pipe=True)
        procs.append(emu)
        urls = []
        for _ in range(2):
            with anyio.fail_after(30):
                line = await anyio.to_thread.run_sync(emu.popen.stdout.readline, abandon_on_cancel=True)
            if not line:
                raise RuntimeError(f"the emulators did not start:\n{emu.tail()}")
            urls.append(line.decode().rsplit(" ", 1)[-1].strip())
        ws_port = free_port()
        config = conductor_config(tmp, urls=urls, ws_port=ws_port, ws_token=WS_TOKEN,
                                  between_chunks_s=between_chunks_s, grace_s=2.0)
        sock = tmp / "run" / "c.sock"
        env: dict[str, str] = {}
        if loop_debug:
            env["PYTHONASYNCIODEBUG"] = "1"
            if not keep_uvloop:  # uvloop + debug mode stalls under load (docs/reliability.md)
                env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(NO_UVLOOP), os.environ.get("PYTHONPATH")]))
        conductor = Proc([PYTHON, "-m", "conductor_core", "serve", "--config", str(config)], name="conductor",
                         log=tmp / "conductor.log", env=env)
        procs.append(conductor)
        await wait_unix(sock, conductor)
        await wait_tcp(ws_port, conductor)
        log(f"soak: conductor pid {conductor.pid}, emulators {', '.join(urls)}, workdir {tmp}")

        latencies: list[float] = []
        t0 = time.monotonic()
        stop = anyio.Event()
        async with connect_unix(sock, surface="soak-probe") as probe:
            idle = await _sample(conductor.pid, probe, report, latencies, t0)
            report.fds["idle"], report.tasks["idle"], report.rss_kib["idle"] = idle["fds"], idle["tasks"], idle["rss_kib"]
            warm_at = max(5.0, duration_s / 4)
            rng = random.Random(seed)
            async with anyio.create_task_group() as tg:
                for i in range(clients):
                    kind = "ws" if i < report.ws_clients else "unix"
                    tg.start_soon(_one_client, i, kind, tally, stop, sock, ws_port, random.Random(rng.random()))
                    if i % 50 == 49:
                        await anyio.sleep(0.05)  # connect in waves, not one burst of thousands
                deadline = t0 + duration_s
                while (now := time.monotonic()) < deadline:
                    await anyio.sleep(min(sample_s, deadline - now))
                    sample = await _sample(conductor.pid, probe, report, latencies, t0)
                    report.samples.append(sample)
                    if "warm" not in report.fds and sample["t"] >= warm_at:
                        report.fds["warm"], report.tasks["warm"], report.rss_kib["warm"] = (
                            sample["fds"], sample["tasks"], sample["rss_kib"])
                    log(f"  t={sample['t']:>6}s fds={sample['fds']} rss={sample['rss_kib']} KiB tasks={sample['tasks']} "
                        f"sessions={sample['sessions']} active={sample['active_chats']} status={sample['status_ms']} ms "
                        f"replies={report.replies} completed={report.completed}")
                end = report.samples[-1] if report.samples else idle
                report.fds["end"], report.tasks["end"], report.rss_kib["end"] = end["fds"], end["tasks"], end["rss_kib"]
                stop.set()  # clients finish the reply they are reading, then leave (bounded)
                tg.cancel_scope.deadline = anyio.current_time() + REPLY_DEADLINE_S + 10
            report.duration_s = round(time.monotonic() - t0, 1)
            # every client has left: what the conductor holds now must be the idle baseline
            with anyio.move_on_after(10):
                while True:
                    after = await _sample(conductor.pid, probe, report, latencies, t0)
                    if after["sessions"] == 1 or after["sessions"] is None:
                        break
                    await anyio.sleep(0.2)
            await anyio.sleep(0.5)
            after = await _sample(conductor.pid, probe, report, latencies, t0)
            report.fds["after"], report.tasks["after"], report.rss_kib["after"] = after["fds"], after["tasks"], after["rss_kib"]
        report.fds["peak"] = max([s["fds"] for s in report.samples] or [0])
        warm_points = [(s["t"], s["rss_kib"]) for s in report.samples if s["t"] >= warm_at]
        report.rss_slope_kib_per_min = _slope_per_min(warm_points)
        report.status_ms = {
            "p50": round(_percentile(latencies, 0.5), 2),
            "p99": round(_percentile(latencies, 0.99), 2),
            "max": round(max(latencies), 2) if latencies else math.nan,
        }
        report.failed = dict(tally.failed)
        report.unexpected = dict(tally.unexpected)
        async with httpx.AsyncClient(timeout=5) as http:
            injected: Counter[str] = Counter()
            for url in urls:
                data = (await http.get(f"{url}/reliability/faults")).json()
                injected.update(data["injected"])
                report.backend_requests += data["served"] + sum(data["injected"].get(k, 0) for k in ("status_503", "status_429"))
            report.faults_injected = dict(injected)
        # SIGTERM with nothing in flight: exit 0 and the socket file gone
        report.exit_code = await anyio.to_thread.run_sync(conductor.stop, 10.0)
        report.socket_removed = not sock.exists()
        if loop_debug:
            report.slow_callbacks = sum("Executing <" in line for line in conductor.log.read_text(errors="replace").splitlines())
        return report
    finally:
        for proc in reversed(procs):
            proc.stop(grace=3.0)
        if workdir is None:
            shutil.rmtree(tmp, ignore_errors=True)


def write_json(report: SoakReport, path: Path) -> None:
    path.write_text(json.dumps(asdict(report), indent=2) + "\n")
