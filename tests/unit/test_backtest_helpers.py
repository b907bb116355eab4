"""The backtest flow's pure helpers: model URIs, scenario choice, file names, the artifact."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from bench.control import ScenarioResult
from bench.scenarios import Scenario, load_scenarios
from flows.backtest import alias_of, backtest_markdown, backtest_path, select_scenarios

SCENARIOS_YAML = """\
defaults:
  seed: 7
  history_fraction: 0.7
  rescale: {peak_eps: 100, quantile: 0.99}
  service: {job_capacity_eps: 25, max_jobs: 12, max_step: 4}
synthetic:
  - {name: syn_a, service_profile: checkout, days: 9}
  - {name: syn_b, service_profile: notifications, days: 9}
"""


@pytest.fixture
def scenarios(tmp_path: Path) -> list[Scenario]:
    """Two trace scenarios (CSV stems ``t1``, ``t2``), then two synthetic ones."""
    traces = tmp_path / "traces"
    traces.mkdir()
    for name in ("t1", "t2"):
        (traces / f"{name}.csv").write_text(
            "timestamp,value\n2024-03-04 00:00:00,10\n2024-03-04 00:05:00,12\n"
        )
    (tmp_path / "s.yaml").write_text(SCENARIOS_YAML)
    return load_scenarios(tmp_path / "s.yaml", traces)


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("models:/scaling-controller@champion", ("scaling-controller", "champion")),
        ("models:/scaling-controller@challenger", ("scaling-controller", "challenger")),
        ("models:/scaling-controller/3", None),
        ("models:/scaling-controller@", None),
        ("models:/@champion", None),
        ("runs:/abc/model", None),
        ("", None),
    ],
)
def test_alias_of(uri: str, expected: tuple[str, str] | None) -> None:
    assert alias_of(uri) == expected


def test_select_keeps_everything_by_default(scenarios: list[Scenario]) -> None:
    assert [s.name for s in select_scenarios(scenarios, True, None)] == [
        "t1",
        "t2",
        "syn_a",
        "syn_b",
    ]
    assert [s.name for s in select_scenarios(scenarios, True, [])] == ["t1", "t2", "syn_a", "syn_b"]


def test_select_drops_synthetic_and_keeps_named_in_file_order(scenarios: list[Scenario]) -> None:
    assert [s.name for s in select_scenarios(scenarios, False, None)] == ["t1", "t2"]
    assert [s.name for s in select_scenarios(scenarios, True, ["syn_b", "t1"])] == ["t1", "syn_b"]


def test_select_refuses_unknown_or_excluded_names(scenarios: list[Scenario]) -> None:
    with pytest.raises(ValueError, match=r"unknown scenarios \['nope'\]"):
        select_scenarios(scenarios, True, ["t1", "nope"])
    with pytest.raises(ValueError, match="synthetic ones excluded"):
        select_scenarios(scenarios, False, ["syn_a"])


def test_select_refuses_an_empty_run(scenarios: list[Scenario]) -> None:
    synthetic_only = [s for s in scenarios if s.trace_path is None]
    with pytest.raises(ValueError, match="include_synthetic is false"):
        select_scenarios(synthetic_only, False, None)


def test_backtest_path_is_in_the_bench_folder_named_by_utc_time(tmp_path: Path) -> None:
    at = datetime(2026, 3, 2, 9, 30, 5, tzinfo=timezone(timedelta(hours=2)))
    assert backtest_path(tmp_path, at) == tmp_path / "backtest-20260302T073005Z.json"
    later = backtest_path(tmp_path, datetime(2026, 3, 2, 7, 30, 6, tzinfo=UTC))
    assert sorted([later.name, backtest_path(tmp_path, at).name])[-1] == later.name


def test_markdown_holds_the_table_the_ppo_note_and_the_records_path() -> None:
    quiet = ScenarioResult(name="a", runs=[], forecast_label="recent", eval_steps=10)
    scored = ScenarioResult(
        name="b",
        runs=[],
        forecast_label="recent",
        eval_steps=10,
        learning={
            "decision_ms_p50": 0.1,
            "decision_ms_p99": 0.4,
            "shield_interventions": {"floor": 3},
            "decisions": 10,
        },
    )
    table = "trace controller cost\nb     ppo        1.00"
    text = backtest_markdown(
        [quiet, scored], table, "`models:/x@champion` (version 2)", None, Path("/s/b.json"), 12.0
    )
    assert text.startswith("# Backtest")
    assert "- 2 scenarios in 12 s: a, b" in text
    assert "- ppo: `models:/x@champion` (version 2)" in text
    assert "naive providers only" in text
    assert "`/s/b.json`" in text
    assert "ppo on b: decision p50 0.1 ms, p99 0.4 ms" in text and "ppo on a" not in text
    assert text.endswith(f"```text\n{table}\n```")
    hybrid = backtest_markdown([quiet], table, "not scored", 2.5, Path("/s/b.json"), 1.0)
    assert "hybrid trained on the histories for at most 2.5 min" in hybrid
