"""The forecast benchmark CLI on small generated traces."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bench.forecast import JSON_KEYS, RUNNERS, main


def _write_trace(path: Path, days: int, seed: int) -> None:
    """A 5-minute trace with a daily cycle and noise, starting off the hour."""
    ts = pd.date_range("2024-03-04 00:07", periods=days * 288, freq="5min")
    minute = np.arange(len(ts)) * 5
    rng = np.random.default_rng(seed)
    value = 300 + 200 * np.sin(2 * np.pi * minute / 1440) + rng.normal(0, 20, len(ts))
    pd.DataFrame({"timestamp": ts, "value": np.round(np.maximum(value, 0))}).to_csv(
        path, index=False
    )


@pytest.mark.parametrize("workers", ["1", "2"])
def test_benchmark_writes_scored_records(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], workers: str
) -> None:
    traces = tmp_path / "traces"
    traces.mkdir()
    _write_trace(traces / "alpha_5min.csv", 12, seed=1)
    _write_trace(traces / "beta_5min.csv", 11, seed=2)
    out = tmp_path / "out" / "forecast.json"
    code = main(
        [
            "--traces-dir",
            str(traces),
            "--json",
            str(out),
            "--models",
            "seasonal_naive_day,seasonal_naive_week",
            "--no-synthetic",
            "--max-origins",
            "20",
            "--workers",
            workers,
        ]
    )
    assert code == 0
    records = json.loads(out.read_text())
    assert len(records) == 2 * 2 * 3
    assert all(tuple(r) == JSON_KEYS for r in records)
    assert {r["trace"] for r in records} == {"alpha_5min", "beta_5min"}
    assert {r["model"] for r in records} == {"seasonal_naive_day", "seasonal_naive_week"}
    assert {r["horizon_min"] for r in records} == {15, 60, 120}
    for r in records:
        assert r["is_real"] is True
        assert math.isfinite(r["mase"]) and math.isfinite(r["wql"]) and r["wql"] > 0
        assert 0 <= r["coverage_80"] <= r["coverage_90"] <= 1
    printed = capsys.readouterr().out
    assert "Summary over the real traces" in printed
    # The reference model's ratio to itself is exactly 1.
    assert "seasonal_naive_day      15                      1.000" in printed


def test_missing_traces_dir_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--traces-dir", str(tmp_path / "nope"), "--no-synthetic"])
    assert exc.value.code != 0
    assert "does not exist" in capsys.readouterr().err


def test_empty_traces_dir_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--traces-dir", str(tmp_path), "--no-synthetic"])
    assert exc.value.code != 0
    assert "no *.csv traces" in capsys.readouterr().err


def test_unknown_model_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--traces-dir", str(tmp_path), "--models", "prophet"])
    assert "choose from" in capsys.readouterr().err


def test_runners_hold_the_baselines() -> None:
    assert {"seasonal_naive_day", "seasonal_naive_week", "auto_ets", "mstl"} <= set(RUNNERS)


def test_day_chunks_partition_origins_without_splitting_a_day() -> None:
    from bench.forecast import day_chunks
    from models.forecaster.protocol import origin_days, prepare_series

    start = pd.Timestamp("2026-01-05 07:30")
    x = np.ones(60 * 1440)
    ps = prepare_series("s", start, x, is_real=False, max_origins=100)
    chunks = day_chunks(ps, max_days=4)
    np.testing.assert_array_equal(np.concatenate(chunks), ps.origins)
    day_sets = [set(origin_days(start, c).tolist()) for c in chunks]
    assert all(len(d) <= 4 for d in day_sets)
    assert sum(len(d) for d in day_sets) == len(set().union(*day_sets))  # no day in two


def test_hybrid_runs_beside_a_baseline_and_writes_its_side_results(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A few training steps only: this checks the wiring, not the model's quality."""
    traces = tmp_path / "traces"
    traces.mkdir()
    _write_trace(traces / "alpha_5min.csv", 12, seed=1)
    out = tmp_path / "forecast.json"
    code = main(
        [
            "--traces-dir",
            str(traces),
            "--json",
            str(out),
            "--models",
            "hybrid,seasonal_naive_day",
            "--no-synthetic",
            "--max-origins",
            "10",
            "--hybrid-steps",
            "3",
            "--hybrid-members",
            "2",
        ]
    )
    assert code == 0
    records = json.loads(out.read_text())
    hybrid = [r for r in records if r["model"] == "hybrid"]
    assert [r["horizon_min"] for r in hybrid] == [15, 60, 120]
    assert all(math.isfinite(r["wql"]) for r in hybrid)
    side = json.loads((tmp_path / "forecast.hybrid.json").read_text())
    assert side["train_steps"] == 2 * 3
    assert len(side["member_best_steps"]) == 2
    assert side["inference_1000_services_ms"] > 0
    assert set(side["holdout_coverage_80_after"]) == {"alpha_5min"}
    assert "anomaly" not in side  # no nyc_taxi trace here
    assert "hybrid: trained 6 steps" in capsys.readouterr().out
