"""``python -m reliability soak|fuzz``: see the package docstring and docs/reliability.md."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path


def _soak(args: argparse.Namespace) -> int:
    import anyio

    from .soak import run_soak

    clients = args.clients if args.clients is not None else (24 if args.quick else 200)
    seconds = args.seconds if args.seconds is not None else (25.0 if args.quick else args.minutes * 60)
    fault_rate = args.fault_rate if args.fault_rate is not None else (0.05 if args.quick else 0.02)
    report = anyio.run(lambda: run_soak(
        clients=clients, duration_s=seconds, fault_rate=fault_rate, ws_fraction=args.ws_fraction, seed=args.seed,
        sample_s=args.sample_s if args.sample_s is not None else (1.0 if args.quick else 5.0),
        loop_debug=args.loop_debug, keep_uvloop=args.keep_uvloop, workdir=Path(args.workdir) if args.workdir else None,
    ))
    print(report.summary())
    if args.json:
        Path(args.json).write_text(json.dumps(asdict(report), indent=2) + "\n")
    return 0 if report.ok() else 1


def _fuzz(args: argparse.Namespace) -> int:
    from .fuzz import TARGETS, run

    targets = sorted(TARGETS) if args.target == "all" else [args.target]
    results = {t: run(t, args.examples, seed=args.seed) for t in targets}
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m reliability")
    sub = parser.add_subparsers(dest="command", required=True)
    soak = sub.add_parser("soak", help="many clients against `conductor serve` and flaky emulated backends")
    soak.add_argument("--clients", type=int, default=None, help="concurrent clients (default 200; --quick 24)")
    soak.add_argument("--minutes", type=float, default=3.0)
    soak.add_argument("--seconds", type=float, default=None, help="overrides --minutes")
    soak.add_argument("--quick", action="store_true", help="≈30 s with a few dozen clients (what CI runs)")
    soak.add_argument("--fault-rate", type=float, default=None, help="per backend request (default 0.02; --quick 0.05)")
    soak.add_argument("--ws-fraction", type=float, default=0.5, help="share of clients on WebSocket (rest Unix)")
    soak.add_argument("--sample-s", type=float, default=None)
    soak.add_argument("--seed", type=int, default=1)
    soak.add_argument("--loop-debug", action="store_true",
                      help="run the conductor with PYTHONASYNCIODEBUG=1 (on plain asyncio) and count slow callbacks (>100 ms)")
    soak.add_argument("--keep-uvloop", action="store_true", help="with --loop-debug: keep uvloop (see docs/reliability.md)")
    soak.add_argument("--json", help="write the full report (with every sample) here")
    soak.add_argument("--workdir", help="keep the config and the processes' logs here (default: a temporary dir, removed)")
    fuzz = sub.add_parser("fuzz", help="property-based fuzzing of the decoders of outside bytes")
    fuzz.add_argument("--target", default="all", help="frame, protocol, ndjson, sse, avatar, config, or all")
    fuzz.add_argument("--examples", type=int, default=10_000)
    fuzz.add_argument("--seed", type=int, default=None)
    fuzz.add_argument("--json", help="write {target: {examples, seconds}} here")
    args = parser.parse_args(argv)
    return _soak(args) if args.command == "soak" else _fuzz(args)


if __name__ == "__main__":
    sys.exit(main())
