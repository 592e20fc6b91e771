"""What every measure gets: the sizes (full or ``--quick``), the report, the work directory and
the conductor launcher (under pyinstrument with ``--profile``)."""

from __future__ import annotations

import resource
from collections.abc import Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import anyio

from .clients import DirectOllama, Result
from .procs import BENCH_MODEL_FAST, emulator, run_conductor
from .report import Report

__all__ = ["Ctx", "bench_cpu", "expected_texts"]

T = TypeVar("T")


class Ctx:
    def __init__(self, *, quick: bool, report: Report, workdir: Path, profile_dir: Path | None) -> None:
        self.quick = quick
        self.report = report
        self.workdir = workdir
        self.profile_dir = profile_dir
        self.measure = ""

    def size(self, full: T, quick: T) -> T:
        return quick if self.quick else full

    def dir(self, name: str) -> Path:
        path = self.workdir / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    @property
    def paced_ms(self) -> float:
        """The ``paced`` model's delay per token (the issue's "realistic ~10 ms")."""
        return self.size(10.0, 2.0)

    @asynccontextmanager
    async def emulator(self, name: str = "emulator"):
        async with emulator(self.dir(name), paced_ms=self.paced_ms, name=name) as emu:
            yield emu

    @staticmethod
    def ollama_backend(emu: Any) -> dict[str, Any]:
        """The conductor's backend table for the emulator (pool big enough for 1,000 streams)."""
        return {"type": "ollama", "url": emu.url, "max_connections": 4096, "default_model": BENCH_MODEL_FAST}

    @asynccontextmanager
    async def conductor(self, name: str, *, backend: dict[str, Any], ws: bool = False):
        profile = None
        if self.profile_dir is not None:
            profile = self.profile_dir / f"profile-{name}.txt"
        async with run_conductor(self.dir(name), backend=backend, ws=ws, profile=profile) as c:
            yield c
        if profile is not None:
            self.report.note(f"pyinstrument profile of the conductor ({name}): {profile}")


def bench_cpu() -> float:
    """CPU seconds of this (the client) process so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def raise_fd_limit(want: int = 16384) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = min(want, hard) if hard != resource.RLIM_INFINITY else want
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


async def expected_texts(direct: DirectOllama, prompts: Sequence[str], model: str, options: dict[str, Any],
                         concurrency: int = 32) -> dict[str, str]:
    """The direct path's text for each prompt (used as the reference when the timed run only
    goes through the conductor)."""
    out: dict[str, str] = {}
    limiter = anyio.CapacityLimiter(concurrency)

    async def one(prompt: str) -> None:
        async with limiter:
            result: Result = await direct.chat(prompt, model, options)
            out[prompt] = result.text

    async with anyio.create_task_group() as tg:
        for p in prompts:
            tg.start_soon(one, p)
    return out

