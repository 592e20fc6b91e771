"""The soak cannot rot: ``python -m reliability soak --quick`` runs a few dozen Unix and
WebSocket clients for ~25 s through a real ``conductor serve`` against two flaky emulated
Ollama backends. No timing is asserted: every reply must be right (or fail with a code a backend
fault explains, its partial text a prefix of the right one), nothing may get stuck, open fds
must not grow in the steady state, tasks must return to the idle baseline once clients leave,
and SIGTERM must exit 0 and remove the socket. The full run's figures are in docs/reliability.md.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.timeout(240)
def test_quick_soak_every_reply_checked_no_leak(tmp_path):
    out = tmp_path / "soak.json"
    proc = subprocess.run(
        [sys.executable, "-m", "reliability", "soak", "--quick", "--loop-debug", "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=230,
    )
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    r = json.loads(out.read_text())
    assert r["mismatches"] == 0 and r["corrupt_partials"] == 0 and r["stuck"] == 0, r["examples"]
    assert r["unexpected"] == {}, r["examples"]
    assert r["completed"] >= 100
    assert sum(r["faults_injected"].values()) > 0  # the faults really happened
    assert set(r["failed"]) <= {"backend_error", "backend_unavailable", "rate_limited", "overloaded"}
    fds, tasks = r["fds"], r["tasks"]
    assert fds["end"] - fds["warm"] <= 16, fds  # steady state: no growth beyond a small constant
    assert fds["after"] - fds["idle"] <= 2 * 24 + 8, fds  # at most the pooled upstream connections stay
    assert tasks["after"] <= tasks["idle"] + 4, tasks
    assert r["status_failures"] == 0
    assert r["exit_code"] == 0 and r["socket_removed"] is True
