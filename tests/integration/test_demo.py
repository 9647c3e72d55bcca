"""The README's main job, run as a user runs it (its own process, its own local Ray)."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = pytest.mark.ray


def test_demo_runs_to_completion():
    out = subprocess.run(
        [sys.executable, "-m", "erlmcp_ray.cli", "demo", "--agents", "2", "--rounds", "3", "--ops", "10",
         "--namespace", "demo-test"],
        capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    text = out.stdout
    assert "== 2 agents done ==" in text
    assert "reads:  L0 hits" in text and "replica lag:" in text and "latency (µs)" in text
    events = int(text.split("subscriber: ")[1].split(" update events")[0])
    assert events > 0
    assert "Traceback" not in out.stderr
