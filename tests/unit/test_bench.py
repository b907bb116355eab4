"""Behaviour of the benchmarks: scenario loading (bench/scenarios.py), the control
benchmark (bench/control.py) on small scenarios, the simulator-speed probe, and the
latency benchmark's record (backends, table, service ids).

The control benchmark runs end to end on a few days of traffic, so these tests take
some seconds each; the scenario is run once per module and shared.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bench.control import (
    CONTROLLERS,
    JSON_KEYS,
    ScenarioResult,
    evaluate_scenario,
    main,
    prepare_scenario,
)
from bench.scenarios import Scenario, ScenarioError, load_scenarios, scenario_trace
from bench.sim_speed import measure
from models.controller.ppo import PPOConfig, train_ppo
from models.controller.providers import PROVIDERS
from simulator.traces import TraceError

DEFAULTS_YAML = """\
defaults:
  seed: 7
  history_fraction: 0.7
  rescale: {peak_eps: 100, quantile: 0.99}
  service:
    job_capacity_eps: 25
    job_startup_s: 90
    rebalance_s: 5
    sla_latency_s: 60
    sla_target: 0.99
    cost_per_job_hour: 0.20
    min_jobs: 1
    max_jobs: 12
    max_step: 4
"""


def write_yaml(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def write_csv(path: Path, days: float, interval_min: int = 5, seed: int = 0) -> Path:
    """A ``timestamp,value`` trace with a daily cycle and noise."""
    n = int(days * 1440 / interval_min)
    ts = pd.date_range("2024-03-04 00:00", periods=n, freq=f"{interval_min}min")
    minute = np.arange(n) * interval_min
    rate = 1000 * (1.2 + np.sin(2 * np.pi * minute / 1440)) * interval_min
    values = np.random.default_rng(seed).poisson(rate)
    frame = pd.DataFrame({"timestamp": ts.strftime("%Y-%m-%d %H:%M:%S"), "value": values})
    frame.to_csv(path, index=False)
    return path


# ------------------------------------------------------------------ scenarios


def test_a_trace_without_an_entry_gets_the_defaults(tmp_path: Path) -> None:
    traces = tmp_path / "traces"
    traces.mkdir()
    write_csv(traces / "plain.csv", days=1)
    cfg = write_yaml(tmp_path / "s.yaml", DEFAULTS_YAML)
    (sc,) = load_scenarios(cfg, traces)
    assert sc.name == "plain"
    assert sc.trace_path == traces / "plain.csv"
    assert (sc.seed, sc.history_fraction, sc.peak_eps, sc.rescale_quantile) == (7, 0.7, 100, 0.99)
    assert sc.service.service_id == "plain"
    assert sc.service.job_capacity_eps == 25
    assert sc.service.max_jobs == 12
    assert sc.service.startup_steps == 2
    assert sc.synthetic_profile is None


def test_per_trace_overrides_merge_deeply_into_the_defaults(tmp_path: Path) -> None:
    traces = tmp_path / "traces"
    traces.mkdir()
    for name in ("b_tuned", "a_plain"):
        write_csv(traces / f"{name}.csv", days=1)
    (traces / "notes.txt").write_text("not a trace")
    cfg = write_yaml(
        tmp_path / "s.yaml",
        DEFAULTS_YAML
        + "traces:\n"
        + "  b_tuned:\n"
        + "    seed: 3\n"
        + "    rescale: {peak_eps: 600}\n"
        + "    service: {job_startup_s: 120, max_jobs: 30}\n"
        + "  not_in_the_dir:\n"
        + "    service: {max_jobs: 99}\n",
    )
    plain, tuned = load_scenarios(cfg, traces)
    assert (plain.name, tuned.name) == ("a_plain", "b_tuned")  # sorted by name
    assert plain.service.max_jobs == 12
    # Overridden keys change, their siblings keep the defaults.
    assert (tuned.seed, tuned.peak_eps, tuned.rescale_quantile) == (3, 600, 0.99)
    assert (tuned.service.job_startup_s, tuned.service.max_jobs) == (120, 30)
    assert tuned.service.job_capacity_eps == 25
    assert tuned.service.cost_per_job_hour == 0.20
    assert tuned.history_fraction == 0.7


def test_synthetic_scenarios_load_after_the_traces_in_file_order(tmp_path: Path) -> None:
    traces = tmp_path / "traces"
    traces.mkdir()
    write_csv(traces / "zz.csv", days=1)
    cfg = write_yaml(
        tmp_path / "s.yaml",
        DEFAULTS_YAML
        + "synthetic:\n"
        + "  - name: second_b\n"
        + "    service_profile: notifications\n"
        + "    days: 9\n"
        + "    seed: 12\n"
        + "    service: {max_jobs: 20}\n"
        + "  - name: first_a\n",
    )
    loaded = load_scenarios(cfg, traces)
    assert [s.name for s in loaded] == ["zz", "second_b", "first_a"]
    b, a = loaded[1:]
    assert (b.synthetic_profile, b.synthetic_days, b.seed) == ("notifications", 9, 12)
    assert (b.service.max_jobs, b.service.job_capacity_eps) == (20, 25)
    assert b.trace_path is None
    assert (a.synthetic_profile, a.synthetic_days, a.seed) == ("checkout", 35, 7)
    assert [s.name for s in load_scenarios(cfg, None)] == ["second_b", "first_a"]


@pytest.mark.parametrize(
    "extra",
    [
        "traces:\n  t:\n    service: {job_capacity: 5}\n",
        "synthetic:\n  - {name: syn, service: {job_capacity: 5}}\n",
    ],
)
def test_an_unknown_service_field_names_the_field(tmp_path: Path, extra: str) -> None:
    traces = tmp_path / "traces"
    traces.mkdir()
    write_csv(traces / "t.csv", days=1)
    cfg = write_yaml(tmp_path / "s.yaml", DEFAULTS_YAML + extra)
    with pytest.raises(ScenarioError, match="job_capacity"):
        load_scenarios(cfg, traces)


def test_an_invalid_service_value_is_a_scenario_error(tmp_path: Path) -> None:
    cfg = write_yaml(
        tmp_path / "s.yaml", DEFAULTS_YAML + "synthetic:\n  - {name: syn, service: {max_jobs: 0}}\n"
    )
    with pytest.raises(ScenarioError, match="syn"):
        load_scenarios(cfg, None)


@pytest.mark.parametrize(
    "text",
    [
        "synthetic:\n  - {name: syn, rescale: {peak_eps: 5}}\n",  # no defaults section
        "defaults:\nsynthetic:\n  - {name: syn, rescale: {peak_eps: 5}}\n",  # empty defaults
        "- defaults\n",  # not a mapping
    ],
)
def test_missing_defaults_is_a_scenario_error(tmp_path: Path, text: str) -> None:
    cfg = write_yaml(tmp_path / "s.yaml", text)
    with pytest.raises(ScenarioError, match="defaults"):
        load_scenarios(cfg, None)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("defaults: {seed: 1}\nsynthetic:\n  - {name: syn}\n", "peak_eps"),
        (DEFAULTS_YAML + "synthetic:\n  - {days: 3}\n", "needs a name"),
        (DEFAULTS_YAML + "synthetic:\n  - {name: syn, service: 3}\n", "'service' must be"),
        (DEFAULTS_YAML + "synthetic:\n  syn: 1\n", "'synthetic' must be"),
        ("defaults: [unclosed\n", "cannot read"),
    ],
)
def test_malformed_scenarios_files_are_scenario_errors(
    tmp_path: Path, text: str, message: str
) -> None:
    cfg = write_yaml(tmp_path / "s.yaml", text)
    with pytest.raises(ScenarioError, match=message):
        load_scenarios(cfg, None)


def test_a_missing_scenarios_file_is_a_scenario_error(tmp_path: Path) -> None:
    with pytest.raises(ScenarioError, match="cannot read"):
        load_scenarios(tmp_path / "nope.yaml", None)


def test_scenario_trace_rescales_the_p99_minute_to_peak_eps(tmp_path: Path) -> None:
    traces = tmp_path / "traces"
    traces.mkdir()
    write_csv(traces / "t.csv", days=2)
    cfg = write_yaml(
        tmp_path / "s.yaml",
        DEFAULTS_YAML
        + "traces:\n  t: {rescale: {peak_eps: 40, quantile: 0.95}}\n"
        + "synthetic:\n  - {name: syn, days: 2, rescale: {peak_eps: 250}}\n",
    )
    csv_sc, syn_sc = load_scenarios(cfg, traces)
    csv_trace = scenario_trace(csv_sc)
    assert len(csv_trace) == 2 * 1440
    assert np.quantile(csv_trace.counts, 0.95) == pytest.approx(40 * 60)
    syn_trace = scenario_trace(syn_sc)
    assert syn_trace.name == "syn"
    assert len(syn_trace) == 2 * 1440
    assert np.quantile(syn_trace.counts, 0.99) == pytest.approx(250 * 60)


def test_scenario_trace_is_reproducible_from_its_seed(tmp_path: Path) -> None:
    cfg = write_yaml(tmp_path / "s.yaml", DEFAULTS_YAML + "synthetic:\n  - {name: s, days: 1}\n")
    (sc,) = load_scenarios(cfg, None)
    np.testing.assert_array_equal(scenario_trace(sc).counts, scenario_trace(sc).counts)


def test_scenario_trace_rejects_an_unknown_profile(tmp_path: Path) -> None:
    cfg = write_yaml(
        tmp_path / "s.yaml",
        DEFAULTS_YAML + "synthetic:\n  - {name: s, days: 1, service_profile: nope}\n",
    )
    (sc,) = load_scenarios(cfg, None)
    with pytest.raises(ScenarioError, match="'nope'"):
        scenario_trace(sc)


# ------------------------------------------------------------------ control benchmark


@pytest.fixture(scope="module")
def small_scenario(tmp_path_factory: pytest.TempPathFactory) -> Scenario:
    cfg = write_yaml(
        tmp_path_factory.mktemp("scenarios") / "s.yaml",
        DEFAULTS_YAML
        + "synthetic:\n  - {name: tiny, service_profile: checkout, days: 6, seed: 3}\n",
    )
    (sc,) = load_scenarios(cfg, None)
    return sc


# A few PPO updates: enough to exercise the ppo lane, not to make it good.
TINY_PPO = PPOConfig(
    total_timesteps=512, n_envs=4, n_steps=64, batch_size=128, n_epochs=1, episode_steps=60
)


@pytest.fixture(scope="module")
def result(small_scenario: Scenario) -> ScenarioResult:
    prepared = prepare_scenario(small_scenario)
    policy, _ = train_ppo([prepared.training_source()], TINY_PPO)
    return evaluate_scenario(prepared, policy, keep_logs=True)


@pytest.mark.slow
def test_run_scenario_records_have_the_documented_keys(result: ScenarioResult) -> None:
    records = result.records()
    assert [r["controller"] for r in records] == list(CONTROLLERS)
    assert set(CONTROLLERS) == {
        "static",
        "static-peak",
        "hpa",
        "keda",
        "predictive",
        "ppo",
        "oracle",
    }
    assert result.learning["decisions"] == result.eval_steps
    assert 0 < result.learning["decision_ms_p50"] <= result.learning["decision_ms_p99"]
    for rec in records:
        assert tuple(rec) == JSON_KEYS
        assert set(rec) == {
            "trace",
            "controller",
            "cost",
            "cost_vs_oracle",
            "sla_compliance",
            "p95_latency_s",
            "dropped_events",
            "actions",
        }
        assert rec["trace"] == "tiny"
        assert 0.0 <= rec["sla_compliance"] <= 100.0
        assert rec["cost"] > 0
        assert rec["p95_latency_s"] >= 0
        assert rec["dropped_events"] >= 0
        assert isinstance(rec["actions"], int)
        assert rec["actions"] >= 0
    json.dumps(records, allow_nan=False)  # plain JSON, no NaN


@pytest.mark.slow
def test_run_scenario_oracle_is_the_cost_bound(result: ScenarioResult) -> None:
    by_name = {r.controller: r.summary for r in result.runs}
    oracle = by_name["oracle"]
    oracle_record = next(r for r in result.records() if r["controller"] == "oracle")
    assert oracle_record["cost_vs_oracle"] == 1.0
    compared = 0
    for name, s in by_name.items():
        if s.sla_compliance >= oracle.sla_compliance:
            compared += 1
            assert s.cost >= oracle.cost * (1 - 1e-9), name
    assert compared >= 2  # the oracle itself and at least one controller
    for rec in result.records():
        s = by_name[rec["controller"]]
        assert rec["cost_vs_oracle"] == pytest.approx(s.cost / oracle.cost, abs=1e-4)
        assert rec["sla_compliance"] == pytest.approx(100 * s.sla_compliance, abs=1e-4)


@pytest.mark.slow
def test_run_scenario_scores_everyone_on_the_same_evaluation_range(
    small_scenario: Scenario, result: ScenarioResult
) -> None:
    trace = scenario_trace(small_scenario)
    n_hist = round(len(trace) * small_scenario.history_fraction)
    assert result.eval_steps == len(trace) - n_hist
    log = result.log
    assert log is not None
    assert log.arrivals.shape == (result.eval_steps, len(CONTROLLERS))
    for lane in range(len(CONTROLLERS)):
        np.testing.assert_array_equal(log.arrivals[:, lane], trace.counts[n_hist:])
    assert len(set(log.initial_jobs.tolist())) == 1
    assert result.forecast_label in {f"{p}+conformal" for p in PROVIDERS}
    # The static lanes keep one count for the whole range.
    for lane, name in enumerate(CONTROLLERS):
        if name.startswith("static"):
            assert len(set(log.target[:, lane].tolist())) == 1, name


@pytest.mark.slow
def test_main_writes_json_and_prints_the_table(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    traces = tmp_path / "traces"
    traces.mkdir()
    write_csv(traces / "small_5min.csv", days=5, interval_min=5)
    cfg = write_yaml(tmp_path / "s.yaml", DEFAULTS_YAML)
    out = tmp_path / "out" / "records.json"
    code = main(
        [
            "--traces-dir",
            str(traces),
            "--scenarios",
            str(cfg),
            "--json",
            str(out),
            "--workers",
            "1",
            "--no-forecaster",
            "--ppo-timesteps",
            "512",
        ]
    )
    assert code == 0
    side = json.loads((out.parent / "records.json.learning.json").read_text())
    assert side["ppo_timesteps"] >= 512
    assert side["scenarios"]["small_5min"]["decisions"] > 0
    records = json.loads(out.read_text())
    assert isinstance(records, list)
    assert [r["controller"] for r in records] == list(CONTROLLERS)
    assert all(tuple(r) == JSON_KEYS and r["trace"] == "small_5min" for r in records)
    assert next(r for r in records if r["controller"] == "oracle")["cost_vs_oracle"] == 1.0
    printed = capsys.readouterr().out
    header = next(line for line in printed.splitlines() if line.startswith("trace"))
    for column in ("controller", "cost", "cost/oracle", "SLA %", "p95 lat s", "actions"):
        assert column in header
    rows = [line for line in printed.splitlines() if line.startswith("small_5min")]
    assert [row.split()[1] for row in rows] == list(CONTROLLERS)
    assert f"wrote 7 records to {out}" in printed


def test_main_rejects_an_unknown_scenario_name(tmp_path: Path) -> None:
    cfg = write_yaml(tmp_path / "s.yaml", DEFAULTS_YAML + "synthetic:\n  - {name: s, days: 6}\n")
    with pytest.raises(SystemExit) as exc:
        main(["--scenarios", str(cfg), "--traces-dir", str(tmp_path), "--only", "nope"])
    assert exc.value.code == 2


@pytest.mark.parametrize("workers", ["1", "2"])
def test_main_names_a_malformed_trace_file(tmp_path: Path, workers: str) -> None:
    traces = tmp_path / "traces"
    traces.mkdir()
    (traces / "broken_trace.csv").write_text(
        "timestamp,value\n2024-01-01 00:00:00,5\n2024-01-01 00:05:00,oops\n"
    )
    cfg = write_yaml(tmp_path / "s.yaml", DEFAULTS_YAML)
    with pytest.raises(TraceError, match=r"broken_trace\.csv.*line 3"):
        main(["--traces-dir", str(traces), "--scenarios", str(cfg), "--workers", workers])


# ------------------------------------------------------------------ simulator speed


def test_measure_returns_a_positive_rate() -> None:
    rate = measure(services=3, steps=30)
    assert math.isfinite(rate)
    assert rate > 0


# ------------------------------------------------------------------ latency


def test_latency_names_the_backends_without_addresses_or_credentials(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from autoscaler.settings import build_settings
    from bench.latency import backends

    for name in ("AUTOSCALER_ONLINE_STORE", "AUTOSCALER_MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(name, raising=False)
    assert backends(build_settings(state_dir=tmp_path)) == {
        "online_store": "sqlite",
        "mlflow_backend": "sqlite",
    }
    # The benchmark honours the environment, as every entry point does.
    monkeypatch.setenv("AUTOSCALER_ONLINE_STORE", "redis")
    monkeypatch.setenv("AUTOSCALER_REDIS_URL", "redis.internal:6391,password=hunter2")
    monkeypatch.setenv("AUTOSCALER_MLFLOW_TRACKING_URI", "postgresql://ml:hunter2@db/mlflow")
    scaled_out = backends(build_settings(state_dir=tmp_path))
    assert scaled_out == {"online_store": "redis", "mlflow_backend": "postgresql"}
    assert "hunter2" not in json.dumps(scaled_out)


def test_latency_table_shows_the_backends_and_the_log_stage() -> None:
    from bench.latency import format_table

    record = {
        "services": 1000,
        "online_store": "redis",
        "mlflow_backend": "sqlite",
        "p50_decision_ms": 19.4,
        "p99_decision_ms": 28.7,
        "alias_check_ms": 9.0,
        "cycle_1000_services_s": 0.99,
        "cycle_stages_s": {"read": 0.77, "decide": 0.2, "act": 0.005},
        "cycle_with_log_s": 1.4,
        "cycle_with_log_stages_s": {"read": 0.7, "decide": 0.2, "act": 0.005, "log": 0.4},
        "prefect_cycle_overhead_s": 1.0,
        "prefect_breakdown": {"flow_run_s": 2.4, "engine_cycle_in_flow_s": 1.4},
    }
    lines = format_table(record).splitlines()
    assert lines[0].split() == ["online", "store", "/", "MLflow", "backend", "redis", "/", "sqlite"]
    assert any(line.split()[-7:] == ["0.7", "/", "0.2", "/", "0.005", "/", "0.4"] for line in lines)


def test_latency_services_take_the_runs_prefix() -> None:
    from bench.latency import plausible_frames

    frames = plausible_frames(3, pd.Timestamp("2026-03-02 12:00"), prefix="lat-abc123")
    assert frames.minute["service_id"].tolist() == [f"lat-abc123-{i:05d}" for i in range(3)]
    assert frames.profiles["service_id"].tolist() == frames.minute["service_id"].tolist()
