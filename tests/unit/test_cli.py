"""Behaviour of the command line (autoscaler/cli.py) through Typer's test runner."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from autoscaler.cli import app

# Wide and colourless, so rich neither wraps nor styles the help text.
ENV = {"COLUMNS": "200", "NO_COLOR": "1", "TERM": "dumb"}

COMMANDS = {
    "demo": "The main job, end to end, on embedded defaults (no server needed).",
    "train-forecaster": "Train the event forecaster on the feature store, register it",
    "train-controller": "Train the PPO controller in the simulator, register it and run the",
    "bench": "Control benchmark over every trace in TRACES_DIR plus the synthetic scenarios.",
    "check-trace": "Validate a trace CSV and describe it (interval, span, one-minute steps).",
    "sim-speed": "Measure simulator throughput in service-steps per second.",
}


def plain(text: str) -> str:
    """Text without ANSI codes, box drawing or line breaks: words and punctuation only."""
    text = re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", text)
    return " ".join(re.sub(r"[\u2500-\u257f]", " ", text).split())


def write_trace(path: Path, days: float = 1.0, interval_min: int = 5) -> Path:
    n = int(days * 1440 / interval_min)
    ts = pd.date_range("2024-03-04 00:00", periods=n, freq=f"{interval_min}min")
    minute = np.arange(n) * interval_min
    values = np.round(600 * (1.5 + np.sin(2 * np.pi * minute / 1440)))
    pd.DataFrame({"timestamp": ts.strftime("%Y-%m-%d %H:%M:%S"), "value": values}).to_csv(
        path, index=False
    )
    return path


def test_help_lists_every_command_with_its_help_text() -> None:
    result = CliRunner().invoke(app, ["--help"], env=ENV)
    assert result.exit_code == 0
    text = plain(result.output)
    for name, help_text in COMMANDS.items():
        assert re.search(rf"\b{re.escape(name)}\b", text), name
        assert help_text in text, name


def test_no_arguments_shows_the_help() -> None:
    result = CliRunner().invoke(app, [], env=ENV)
    assert "check-trace" in plain(result.output)


def test_check_trace_describes_a_good_file(tmp_path: Path) -> None:
    path = write_trace(tmp_path / "good.csv", days=2)
    result = CliRunner().invoke(app, ["check-trace", str(path)], env=ENV)
    assert result.exit_code == 0, result.output
    out = plain(result.stdout)
    assert "good.csv: 5-minute source, 2880 one-minute steps" in out
    assert "from 2024-03-04 00:00:00 (2.0 days)" in out
    # 900 events per 5 minutes on average is 3 events/s; the peak is 1500 per 5 minutes.
    assert "mean 3.00 events/s" in out
    assert "p99 5.00 events/s" in out


def test_check_trace_reports_a_one_minute_source(tmp_path: Path) -> None:
    path = write_trace(tmp_path / "minutes.csv", days=0.5, interval_min=1)
    result = CliRunner().invoke(app, ["check-trace", str(path)], env=ENV)
    assert result.exit_code == 0, result.output
    assert "1-minute source, 720 one-minute steps" in result.stdout


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ("timestamp,value\n2024-01-01 00:00:00,5\n2024-01-01 00:05:00,oops\n", "line 3"),
        ("time,value\n2024-01-01 00:00:00,5\n2024-01-01 00:05:00,6\n", "missing column"),
        ("timestamp,value\n2024-01-01 00:00:00,5\n2024-01-01 00:05:00,-1\n", "negative"),
        ("", "empty"),
    ],
)
def test_check_trace_rejects_a_malformed_file_with_exit_code_2(
    tmp_path: Path, body: str, problem: str
) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(body)
    result = CliRunner().invoke(app, ["check-trace", str(path)], env=ENV)
    assert result.exit_code == 2
    message = plain(result.stderr)
    assert message.startswith("invalid trace:")
    assert "bad.csv" in message
    assert problem in message
    assert result.stdout == ""


def test_check_trace_reports_a_missing_file(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["check-trace", str(tmp_path / "nope.csv")], env=ENV)
    assert result.exit_code == 2
    assert "file not found" in result.stderr


def test_serve_refuses_to_start_without_an_api_token(tmp_path: Path) -> None:
    env = {**ENV, "AUTOSCALER_STATE_DIR": str(tmp_path)}
    result = CliRunner().invoke(app, ["serve"], env={**env, "AUTOSCALER_API_TOKEN": ""})
    assert result.exit_code == 2
    assert "set AUTOSCALER_API_TOKEN" in result.stderr
