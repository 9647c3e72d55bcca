"""What every benchmark report says about the code it measured."""

from __future__ import annotations

import subprocess


def git_revision() -> str:
    """The short commit, with -dirty when tracked files differ from it."""
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10, check=False)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, check=False,
                               text=True, timeout=10)
        return rev.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except Exception:  # noqa: BLE001 - a report without a revision is still a report
        return "unknown"
