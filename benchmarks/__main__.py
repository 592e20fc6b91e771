"""``python -m benchmarks [--quick] [--only a,b] [--json FILE] [--profile]``: see README.md.

Exit status: 0 when every measure ran and every text matched; 1 on any text mismatch or error.
Timings never decide the exit status (a missed target is shown in the table, not asserted).
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
import traceback
from pathlib import Path

import anyio

from .context import Ctx, raise_fd_limit
from .procs import workdir
from .report import Report

MEASURES = {
    "latency": "benchmarks.latency",
    "concurrency": "benchmarks.concurrency",
    "relay": "benchmarks.relay",
    "startup": "benchmarks.startup",
    "memory": "benchmarks.memory",
    "cancel": "benchmarks.cancel",
    "realmodel": "benchmarks.realmodel",
}


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description="Conductor vs direct: the benchmark suite.")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, a few seconds: correctness only (CI)")
    parser.add_argument("--only", default="", help=f"comma list of measures: {','.join(MEASURES)}")
    parser.add_argument("--json", dest="json_path", default=None, help="also write the results as JSON here")
    parser.add_argument("--profile", action="store_true",
                        help="run each conductor under pyinstrument (if installed); reports go to --profile-dir")
    parser.add_argument("--profile-dir", default="benchmarks/profiles")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.only.split(",") if n.strip()] or list(MEASURES)
    unknown = [n for n in names if n not in MEASURES]
    if unknown:
        parser.error(f"unknown measure(s) {', '.join(unknown)}; known: {', '.join(MEASURES)}")
    args.names = names
    return args


async def run_all(args: argparse.Namespace, report: Report) -> None:
    profile_dir = None
    if args.profile:
        if importlib.util.find_spec("pyinstrument") is None:
            report.note("--profile: pyinstrument is not installed (pip install pyinstrument); running without it")
        else:
            profile_dir = Path(args.profile_dir).resolve()
            profile_dir.mkdir(parents=True, exist_ok=True)
    with workdir() as tmp:
        ctx = Ctx(quick=args.quick, report=report, workdir=tmp, profile_dir=profile_dir)
        for name in args.names:
            module = importlib.import_module(MEASURES[name])
            ctx.measure = name
            started = time.perf_counter()
            print(f"== {module.NAME} ...", file=sys.stderr, flush=True)
            try:
                await module.run(ctx)
            except Exception as exc:  # one broken measure must not hide the others' results
                traceback.print_exc()
                report.error(f"{module.NAME}: {type(exc).__name__}: {exc}")
            print(f"   {module.NAME}: {time.perf_counter() - started:.1f} s", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    raise_fd_limit()
    report = Report(quick=args.quick)
    try:
        import uvloop  # noqa: F401

        options = {"use_uvloop": True}
    except ImportError:
        options = {}
    try:
        anyio.run(run_all, args, report, backend="asyncio", backend_options=options)
    except KeyboardInterrupt:
        report.error("interrupted")
    print()
    print(report.table())
    print()
    print(report.summary())
    if args.json_path:
        report.dump(args.json_path)
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main())
