"""`autoscaler demo`, the README's first command, end to end.

The main job on a short history and loop, without training (the engine then serves its
fallbacks; the training flows have their own tests): Prefect, Great Expectations, Feast,
MLflow, the simulated cluster and the report, on the engines the environment names (the
embedded defaults under `make test`, Redis and PostgreSQL under `make test-scaled`).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from autoscaler.cli import app

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# Wide and colourless, so rich neither wraps nor styles the output.
ENV = {"COLUMNS": "200", "NO_COLOR": "1", "TERM": "dumb"}


def test_demo_runs_the_loop_and_writes_the_report(prefect_harness: None, tmp_path: Path) -> None:
    env = {**ENV, "AUTOSCALER_STATE_DIR": str(tmp_path / "state")}
    args = ["demo", "--hours", "0.25", "--history-days", "8", "--no-train"]
    result = CliRunner().invoke(app, args, env=env)
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "15/15 minutes" in out
    rows = [line.split() for line in out.splitlines() if line.startswith("* ")]
    assert [row[1] for row in rows] == ["live", "hpa", "keda"]
    match = re.search(r"^Report: (.+)$", out, flags=re.MULTILINE)
    assert match is not None, out
    index = Path(match.group(1).strip())
    assert index.name == "index.html" and index.is_file()
    assert index.is_relative_to((tmp_path / "state" / "demo" / "reports").resolve())
    html = index.read_text()
    pngs = sorted(index.parent.glob("*.png"))
    assert len(pngs) == 6  # forecast and jobs plots of the three services
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.name in html for p in pngs)
    assert "predictive-rule" in html  # who decided, said on the page
