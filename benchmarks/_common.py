"""Helpers every benchmark script shares (this directory is on sys.path when one runs)."""

from __future__ import annotations

import os
import subprocess


def pct(samples: list[float], q: float) -> float:
    """The ``q`` quantile of ``samples`` (nearest rank)."""
    s = sorted(samples)
    return s[min(len(s) - 1, int(len(s) * q))]


def git_revision() -> str:
    """``git describe --always --dirty`` of the checkout the benchmarks live in."""
    try:
        out = subprocess.run(["git", "describe", "--always", "--dirty"], check=False, capture_output=True,
                             text=True, timeout=10, cwd=os.path.dirname(os.path.abspath(__file__)))
        return out.stdout.strip() or "?"
    except Exception:  # noqa: BLE001 - a report without a revision is still a report
        return "?"


def emit(lines: list[str], out: os.PathLike | None) -> None:
    """Print a report and, with ``--out``, write it there too."""
    text = "\n".join(lines) + "\n"
    print(text)
    if out:
        with open(out, "w") as f:
            f.write(text)
