"""The notebooks in notebooks/ run from top to bottom in a real kernel (nbclient, the venv's
ipykernel), each starting its own local memory system (RAY_ADDRESS unset); a cell that raises fails
the test. They are stored without outputs. Each run's time is printed in the test output."""

from __future__ import annotations

import time
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def test_the_four_notebooks_are_there():
    assert [p.name[:2] for p in NOTEBOOKS] == ["01", "02", "03", "04"]


@pytest.mark.ray
@pytest.mark.timeout(600)
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs(path, tmp_path, monkeypatch, capsys):
    book = nbformat.read(path, as_version=4)
    stored = [i for i, c in enumerate(book.cells) if c.cell_type == "code" and (c.outputs or c.execution_count)]
    assert not stored, f"{path.name} is stored with outputs in cells {stored}: clear them before committing"
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    t0 = time.monotonic()
    NotebookClient(book, kernel_name="python3", timeout=300, resources={"metadata": {"path": str(tmp_path)}}).execute()
    seconds = time.monotonic() - t0
    errors = [o for c in book.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors
    with capsys.disabled():
        print(f"\n[{path.name} ran in {seconds:.1f} s]")
