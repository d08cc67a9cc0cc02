"""Every tutorial script under ``docs/examples/`` runs at its small size and has its page.

Each script runs as ``python docs/examples/<name>.py --small --out <tmp>`` in a subprocess (as a
reader would run it, from the repository root), must exit cleanly and write ``<name>.png``; its
page ``docs/tutorials/<name>.md`` must include the script.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "docs" / "examples").glob("*.py"))
#: Seconds one small run may take: generous, since CI machines are shared.
TIMEOUT = 300


@pytest.mark.parametrize("script", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_runs_small(script: Path, tmp_path: Path) -> None:
    env = dict(os.environ, MPLBACKEND="Agg")
    proc = subprocess.run(
        [sys.executable, str(script.relative_to(ROOT)), "--small", "--out", str(tmp_path)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert proc.returncode == 0, f"{script.name} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    assert proc.stdout.strip(), f"{script.name} printed nothing"
    figure = tmp_path / f"{script.stem}.png"
    assert figure.is_file() and figure.stat().st_size > 0, f"{script.name} wrote no {figure.name}"


@pytest.mark.parametrize("script", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_has_page(script: Path) -> None:
    page = ROOT / "docs" / "tutorials" / f"{script.stem}.md"
    assert page.is_file(), f"{script.name} has no page {page.relative_to(ROOT)}"
    assert f"../examples/{script.name}" in page.read_text(encoding="utf-8"), f"{page.name} does not include the script"
