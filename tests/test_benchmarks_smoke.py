"""The benchmark suite cannot rot: ``python -m benchmarks --quick`` runs every measure at tiny
sizes, and must exit 0 with every conductor text equal to the direct one. No timing is asserted."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.timeout(240)
def test_quick_suite_runs_and_texts_match(tmp_path):
    out = tmp_path / "results.json"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=230,
    )
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    results = json.loads(out.read_text())
    assert results["errors"] == []
    assert results["mismatches"] == 0
    assert results["pairs_checked"] >= 50  # every measure compared texts
    measures = {row["measure"] for row in results["rows"]}
    for expected in ("1 latency", "2 concurrency", "3 relay cost", "4 start-up", "5 memory", "6 cancellation"):
        assert expected in measures, f"{expected} produced no row"


def test_a_text_mismatch_fails_the_run():
    from benchmarks.report import Report

    report = Report(quick=True)
    assert report.check("same", "abc", "abc")
    assert report.check("prefix", "abcdef", "abc", prefix=True)
    assert not report.failed
    assert not report.check("different", "abc", "abd")
    assert report.failed and report.mismatches == 1
