"""The results table, the text check and the JSON dump.

A row holds absolute figures for the direct path and the conductor, the added time, the ratio
conductor/direct, the issue's target and whether it is met (``None``: no target, or the row is
informative only). A text mismatch is printed loudly at once and fails the run.
"""

from __future__ import annotations

import json
import math
import platform
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from .stats import Paired, fmt, fmt_ratio

__all__ = ["Report", "Row"]


@dataclass
class Row:
    measure: str
    metric: str
    direct: str = "-"
    conductor: str = "-"
    added: str = "-"
    ratio: str = "-"
    target: str = ""
    met: bool | None = None
    spread: str = ""
    values: dict[str, Any] = field(default_factory=dict)


class Report:
    def __init__(self, *, quick: bool) -> None:
        self.quick = quick
        self.rows: list[Row] = []
        self.errors: list[str] = []
        self.notes: list[str] = []
        self.pairs_checked = 0
        self.mismatches = 0
        self.started = time.time()

    # ------------------------------------------------------------------ correctness
    def check(self, label: str, direct_text: str, conductor_text: str, *, prefix: bool = False) -> bool:
        """The conductor's text must equal the direct text (or be a prefix of it, for a reply
        cancelled on purpose). A mismatch is printed at once, loudly, and fails the run."""
        from .clients import digest

        self.pairs_checked += 1
        ok = direct_text.startswith(conductor_text) if prefix else direct_text == conductor_text
        if not ok:
            self.mismatches += 1
            if self.mismatches <= 20:
                print(
                    f"\n!!!!! TEXT MISMATCH [{label}]: direct {digest(direct_text)} ({len(direct_text)} chars) "
                    f"!= conductor {digest(conductor_text)} ({len(conductor_text)} chars)\n"
                    f"!!!!!   direct:    {direct_text[:120]!r}\n!!!!!   conductor: {conductor_text[:120]!r}\n",
                    file=sys.stderr, flush=True,
                )
        return ok

    def error(self, message: str) -> None:
        self.errors.append(message)
        print(f"\n!!!!! ERROR: {message}\n", file=sys.stderr, flush=True)

    def note(self, message: str) -> None:
        self.notes.append(message)

    @property
    def failed(self) -> bool:
        return bool(self.errors or self.mismatches)

    # ------------------------------------------------------------------ rows
    def add(self, row: Row) -> Row:
        self.rows.append(row)
        return row

    def paired(self, measure: str, metric: str, p: Paired, *, unit: str = "ms", target: str = "",
               limit: float | None = None, on: str = "added", show_ratio: bool = True) -> Row:
        """A row from interleaved rounds: direct, conductor, added (with its spread), ratio.
        ``limit`` applies to ``on`` ("added" or "ratio") and decides ``met`` (full runs only)."""
        lo, hi = p.spread(p.added_rounds if on == "added" else p.ratio_rounds)
        value = p.added if on == "added" else p.ratio
        met = None
        if limit is not None and not self.quick and not math.isnan(value):
            met = value <= limit
        spread = (f"{fmt(lo, unit)} .. {fmt(hi, unit)}" if on == "added" else f"{fmt_ratio(lo)} .. {fmt_ratio(hi)}")
        return self.add(Row(
            measure, metric, fmt(p.direct, unit), fmt(p.conductor, unit), fmt(p.added, unit),
            fmt_ratio(p.ratio) if show_ratio else "-", target, met, f"rounds {len(p.direct_rounds)}: {spread}",
            {"direct_rounds": p.direct_rounds, "conductor_rounds": p.conductor_rounds,
             "added": p.added, "ratio": p.ratio},
        ))

    def single(self, measure: str, metric: str, value: float, *, unit: str = "ms", target: str = "",
               limit: float | None = None, higher_is_better: bool = False, spread: str = "",
               direct: float | None = None, digits: int | None = None) -> Row:
        met = None
        if limit is not None and not self.quick and not math.isnan(value):
            met = value >= limit if higher_is_better else value <= limit
        return self.add(Row(measure, metric, fmt(direct, unit, digits) if direct is not None else "-",
                            fmt(value, unit, digits), "-", "-", target, met, spread,
                            {"value": value, "direct": direct}))

    # ------------------------------------------------------------------ output
    def table(self) -> str:
        head = ["measure", "metric", "direct", "conductor", "added", "ratio c/d", "target", "met?", "spread"]
        body = [[r.measure, r.metric, r.direct, r.conductor, r.added, r.ratio, r.target,
                 {True: "yes", False: "NO", None: ""}[r.met], r.spread] for r in self.rows]
        widths = [max(len(str(x)) for x in col) for col in zip(head, *body)]
        line = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
        out = [line(head), line(["-" * w for w in widths])]
        last = None
        for cells in body:
            if last is not None and cells[0] != last:
                out.append("")
            last = cells[0]
            out.append(line(cells))
        return "\n".join(out)

    def summary(self) -> str:
        lines = [
            f"machine: {platform.node()} {platform.machine()}, {_cpus()} CPUs, Python {platform.python_version()}; "
            f"{time.strftime('%Y-%m-%d %H:%M', time.localtime(self.started))}; "
            f"{'QUICK (correctness only: timings meaningless)' if self.quick else 'full run'}",
            f"text check: {self.pairs_checked} pairs compared, {self.mismatches} mismatches",
        ]
        lines += [f"note: {n}" for n in self.notes]
        if self.errors:
            lines.append(f"ERRORS ({len(self.errors)}):")
            lines += [f"  - {e}" for e in self.errors]
        missed = [f"{r.measure} / {r.metric}" for r in self.rows if r.met is False]
        if missed:
            lines.append("targets missed: " + "; ".join(missed))
        lines.append("RESULT: " + ("FAILED" if self.failed else "ok"))
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        return {
            "quick": self.quick,
            "started": self.started,
            "machine": {"node": platform.node(), "cpus": _cpus(), "python": platform.python_version()},
            "rows": [asdict(r) for r in self.rows],
            "pairs_checked": self.pairs_checked,
            "mismatches": self.mismatches,
            "errors": self.errors,
            "notes": self.notes,
            "failed": self.failed,
        }

    def dump(self, path: str) -> None:
        with open(path, "w") as f:
            json.dump(self.to_json(), f, indent=2, default=str)


def _cpus() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 0
