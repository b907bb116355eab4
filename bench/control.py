"""Control benchmark: every controller on every trace, scored against the oracle.

    python -m bench.control --traces-dir DIR --json PATH

For each scenario (every CSV in DIR plus the synthetic scenarios of
bench/scenarios.yaml) the series is split by time: the first 70% is history, the
last 30% the evaluation range. Rules are calibrated on the end of the history
(models.controller.calibrate); every controller and the oracle are then scored on
the evaluation range from the same initial state. Learned models (later issues)
will train on the history only.

Controllers: ``static`` (best fixed count in hindsight on the evaluation range),
``static-peak`` (the count that serves the busiest minute), ``hpa``, ``keda``,
``predictive`` (forecast provider and settings calibrated on history; the provider
is printed beside the table) and ``oracle`` (perfect knowledge; the bound).

JSON records have exactly the keys ``trace, controller, cost, cost_vs_oracle,
sla_compliance, p95_latency_s, dropped_events, actions``; ``sla_compliance`` is a
percentage, ``cost`` in the scenario's currency.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bench.cli import trace_bench_parser
from bench.scenarios import Scenario, load_scenarios, scenario_trace
from models.controller.base import Controller, LaneGroup, ScheduleController
from models.controller.calibrate import Family, calibrate, grid, lanes, pick
from models.controller.hpa import HPAController
from models.controller.keda import KEDAController
from models.controller.oracle import solve_oracle
from models.controller.providers import PROVIDERS, conformal_forecasts
from models.controller.rollout import ForecastArrays, run_controller
from models.controller.rules import PredictiveController, StaticController, peak_count
from simulator.config import ClusterParams, ServiceConfig
from simulator.metrics import SimLog, Summary, summarize
from simulator.run import simulate_totals

CONTROLLERS = ("static", "static-peak", "hpa", "keda", "predictive", "oracle")
JSON_KEYS = (
    "trace",
    "controller",
    "cost",
    "cost_vs_oracle",
    "sla_compliance",
    "p95_latency_s",
    "dropped_events",
    "actions",
)
QUANTILES = (0.5, 0.9, 0.95, 0.99)
CALIBRATION_DAYS = 7
"""At most this many days at the end of the history calibrate the rules."""


@dataclass
class ControllerRun:
    """One controller's score on one scenario's evaluation range."""

    controller: str
    summary: Summary
    setting: str


@dataclass
class ScenarioResult:
    """Everything the benchmark measured on one scenario."""

    name: str
    runs: list[ControllerRun]
    forecast_label: str
    eval_steps: int
    seconds: dict[str, float] = field(default_factory=dict)
    log: SimLog | None = None
    """The evaluation run, one lane per controller in ``CONTROLLERS`` order."""

    def oracle_cost(self) -> float:
        return next(r.summary.cost for r in self.runs if r.controller == "oracle")

    def records(self) -> list[dict[str, Any]]:
        oracle = self.oracle_cost()
        return [
            {
                "trace": self.name,
                "controller": r.controller,
                "cost": round(r.summary.cost, 4),
                # null, not NaN (invalid JSON), when the oracle costs nothing.
                "cost_vs_oracle": round(r.summary.cost / oracle, 4) if oracle > 0 else None,
                "sla_compliance": round(100.0 * r.summary.sla_compliance, 4),
                "p95_latency_s": round(r.summary.p95_latency_s, 3),
                "dropped_events": round(r.summary.dropped_events, 1),
                "actions": r.summary.actions,
            }
            for r in self.runs
        ]


def initial_jobs(first_minute: float, service: ServiceConfig) -> int:
    """Jobs every controller starts with: enough for the first minute at 80% load."""
    need = math.ceil(first_minute / (service.job_step_capacity * 0.8))
    return int(min(max(need, service.min_jobs, 1), service.max_jobs))


def best_static(service: ServiceConfig, arrivals: np.ndarray, j0: int, seed: int) -> int:
    """The fixed count that meets the SLA target most cheaply, in hindsight."""
    counts = np.arange(service.min_jobs, service.max_jobs + 1)
    params = lanes(service, len(counts))
    arr = np.repeat(arrivals[:, None], len(counts), axis=1)
    totals = simulate_totals(params, arr, counts, np.full(len(counts), j0), seed=seed)
    with np.errstate(divide="ignore", invalid="ignore"):
        sla = np.where(totals.arrivals > 0, 1 - totals.missed / totals.arrivals, 1.0)
    return int(counts[pick(totals.cost, sla, service.sla_target)])


def _forecasts(
    series: np.ndarray, calib_end: int, start: int, end: int, horizons: tuple[int, ...]
) -> list[ForecastArrays]:
    return [
        conformal_forecasts(series, (0, calib_end), (start, end), horizons, QUANTILES, name)
        for name in PROVIDERS
    ]


def _describe(chosen: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in chosen.items() if not k.startswith("_"))


def _families(service: ServiceConfig) -> dict[str, Family]:
    """The rules calibrated on history and the settings each may take."""
    return {
        "hpa": Family(
            lambda s: HPAController(target_utilization=s["target_utilization"]),
            grid(target_utilization=[0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]),
        ),
        "keda": Family(
            lambda s: KEDAController(lag_threshold=s["lag_threshold"]),
            # Kafka's lag of a group that keeps up is about 2.5 s of traffic (half the
            # 5 s commit interval), so a threshold of cap * 2.5 s / u holds the jobs
            # near utilization u.
            grid(
                lag_threshold=[
                    round(service.job_capacity_eps * 2.5 / u, 3)
                    for u in (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
                ]
            ),
        ),
        "predictive": Family(
            lambda s: PredictiveController(
                target_utilization=s["target_utilization"],
                quantile_level=s["quantile_level"],
                hold_steps=s["hold_steps"],
            ),
            grid(
                _forecast=list(range(len(PROVIDERS))),
                target_utilization=[0.6, 0.7, 0.8, 0.9],
                quantile_level=[0.9, 0.95, 0.99],
                hold_steps=[0, 10],
            ),
        ),
    }


def run_scenario(scenario: Scenario, keep_logs: bool = False) -> ScenarioResult:
    """Calibrate on history, then score every controller on the evaluation range.

    Args:
        scenario: The scenario.
        keep_logs: Keep the evaluation log (for plots).

    Returns:
        The scores; the oracle's come from replaying its plan in the simulator.
    """
    clock: dict[str, float] = {}
    tick = time.perf_counter()
    trace = scenario_trace(scenario)
    n_hist = len(trace.split(scenario.history_fraction)[0])
    series = np.asarray(trace.counts, dtype=np.float64)
    n_all = len(series)
    service, seed = scenario.service, scenario.seed
    a_eval = series[n_hist:]
    j0 = initial_jobs(a_eval[0], service)
    horizons = tuple(range(1, service.startup_steps + 3))

    # Calibration range: the end of the history; forecasts there are calibrated on
    # the history before it, so no rule sees its own calibration residuals.
    c0 = n_hist - min(CALIBRATION_DAYS * 1440, int(0.4 * n_hist))
    families = _families(service)
    calibrations = calibrate(
        families,
        service,
        series[c0:n_hist],
        initial_jobs(series[c0], service),
        forecasts=_forecasts(series, c0, c0, n_hist, horizons),
        seed=seed,
    )
    clock["calibrate"] = time.perf_counter() - tick

    tick = time.perf_counter()
    plan = solve_oracle(ClusterParams.from_services([service]), a_eval, j0)
    clock["oracle"] = time.perf_counter() - tick

    # Every controller is one lane of a single evaluation run: same arrivals, same
    # initial state, same seed.
    tick = time.perf_counter()
    chosen_provider = PROVIDERS[int(calibrations["predictive"].chosen["_forecast"])]
    eval_forecast = conformal_forecasts(
        series, (0, n_hist), (n_hist, n_all), horizons, QUANTILES, chosen_provider
    )
    static_n = best_static(service, a_eval, j0, seed)
    peak_n = int(peak_count(a_eval[:, None], ClusterParams.from_services([service]))[0])
    chosen = {k: calibrations[k].chosen for k in ("hpa", "keda", "predictive")}
    members: list[tuple[Controller, list[int]]] = [
        (StaticController(static_n), [0]),
        (StaticController(peak_n, "static-peak"), [1]),
    ]
    for lane, name in enumerate(("hpa", "keda", "predictive"), start=2):
        settings = {k: np.array([v]) for k, v in chosen[name].items() if not k.startswith("_")}
        members.append((families[name].make(settings), [lane]))
    members.append((ScheduleController(plan.targets, "oracle"), [5]))
    settings_text = [
        f"jobs={static_n}",
        f"jobs={peak_n}",
        _describe(chosen["hpa"]),
        _describe(chosen["keda"]),
        _describe(chosen["predictive"]) + f", forecast={eval_forecast.label}",
        "perfect knowledge",
    ]
    n_lanes = len(CONTROLLERS)
    forecast = ForecastArrays(
        values=np.repeat(eval_forecast.values, n_lanes, axis=1),
        horizons=eval_forecast.horizons,
        quantiles=eval_forecast.quantiles,
        label=eval_forecast.label,
    )
    log = run_controller(
        lanes(service, n_lanes),
        np.repeat(a_eval[:, None], n_lanes, axis=1),
        LaneGroup(members),
        np.full(n_lanes, j0),
        forecast=forecast,
        seed=seed,
    )
    clock["controllers"] = time.perf_counter() - tick
    summaries = summarize(log)
    runs = [
        ControllerRun(name, summaries[i], settings_text[i]) for i, name in enumerate(CONTROLLERS)
    ]
    return ScenarioResult(
        name=scenario.name,
        runs=runs,
        forecast_label=eval_forecast.label,
        eval_steps=len(a_eval),
        seconds=clock,
        log=log if keep_logs else None,
    )


def format_table(results: list[ScenarioResult]) -> str:
    """The benchmark table, one row per scenario and controller."""
    head = (
        f"{'trace':<28} {'controller':<12} {'cost':>10} {'cost/oracle':>11} "
        f"{'SLA %':>8} {'p95 lat s':>9} {'dropped':>10} {'actions':>7}  setting"
    )
    lines = [head, "-" * len(head)]
    for res in results:
        oracle = res.oracle_cost()
        for r in res.runs:
            s = r.summary
            ratio = s.cost / oracle if oracle > 0 else math.nan
            lines.append(
                f"{res.name:<28} {r.controller:<12} {s.cost:>10.2f} {ratio:>11.3f} "
                f"{100 * s.sla_compliance:>8.3f} {s.p95_latency_s:>9.1f} "
                f"{s.dropped_events:>10.0f} {s.actions:>7d}  {r.setting}"
            )
    return "\n".join(lines)


def run_benchmark(
    scenarios: list[Scenario],
    workers: int = 2,
    progress: Callable[[ScenarioResult], None] | None = None,
    keep_logs: bool = False,
) -> list[ScenarioResult]:
    """Run scenarios, ``workers`` at a time; results keep the input order."""
    if workers <= 1:
        results = []
        for sc in scenarios:
            results.append(run_scenario(sc, keep_logs))
            if progress:
                progress(results[-1])
        return results
    # Longest first, so the biggest scenario does not start last and run alone.
    order = sorted(range(len(scenarios)), key=lambda i: -_expected_steps(scenarios[i]))
    with ProcessPoolExecutor(max_workers=workers) as pool:
        futures = {i: pool.submit(run_scenario, scenarios[i], keep_logs) for i in order}
        for fut in as_completed(futures.values()):
            if progress:
                progress(fut.result())
        return [futures[i].result() for i in range(len(scenarios))]


def _expected_steps(scenario: Scenario) -> float:
    """Minutes a scenario spans, for scheduling only (first to last CSV timestamp)."""
    if scenario.trace_path is None:
        return scenario.synthetic_days * 1440.0
    try:
        lines = scenario.trace_path.read_text().strip().splitlines()
        first, last = (pd.Timestamp(line.split(",")[0]) for line in (lines[1], lines[-1]))
        return (last - first).total_seconds() / 60
    except (OSError, ValueError, IndexError):
        return 0.0  # a malformed file fails properly when the scenario runs


def main(argv: list[str] | None = None) -> int:
    from autoscaler.settings import build_settings

    settings = build_settings()
    parser = trace_bench_parser(
        "python -m bench.control", __doc__.split("\n\n")[0], settings.traces_dir
    )
    parser.add_argument(
        "--scenarios", type=Path, default=settings.scenarios_file, help="scenarios YAML"
    )
    parser.add_argument(
        "--only", action="append", default=None, help="run only these scenario names (repeatable)"
    )
    parser.add_argument("--no-synthetic", action="store_true", help="skip the synthetic scenarios")
    parser.add_argument(
        "--workers", type=int, default=2, help="scenarios run in parallel (default 2)"
    )
    args = parser.parse_args(argv)

    scenarios = load_scenarios(args.scenarios, args.traces_dir)
    if args.no_synthetic:
        scenarios = [s for s in scenarios if s.trace_path is not None]
    if args.only:
        scenarios = [s for s in scenarios if s.name in set(args.only)]
        if not scenarios:
            parser.error(f"no scenario named {args.only}")
    start = time.perf_counter()

    def report(res: ScenarioResult) -> None:
        took = ", ".join(f"{k} {v:.1f}s" for k, v in res.seconds.items())
        print(
            f"[{time.perf_counter() - start:6.1f}s] {res.name}: "
            f"{res.eval_steps} steps scored ({took})",
            file=sys.stderr,
            flush=True,
        )

    results = run_benchmark(scenarios, workers=args.workers, progress=report)
    print(format_table(results))
    print(f"\n{len(results)} scenarios in {time.perf_counter() - start:.1f} s")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        records = [rec for res in results for rec in res.records()]
        args.json.write_text(json.dumps(records, indent=2) + "\n")
        print(f"wrote {len(records)} records to {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
