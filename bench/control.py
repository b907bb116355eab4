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
percentage, ``cost`` in the scenario's currency. ``PATH.learning.json`` holds the
training times, the PPO decision latency and the shield's interventions per trace.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bench.cli import trace_bench_parser
from bench.scenarios import Scenario, load_scenarios, scenario_trace
from models.controller.base import Controller, LaneGroup, Observation, ScheduleController
from models.controller.calibrate import Calibration, Family, calibrate, grid, lanes, pick
from models.controller.env import EpisodeSource, RuleSettings
from models.controller.hpa import HPAController
from models.controller.keda import KEDAController
from models.controller.oracle import solve_oracle
from models.controller.ppo import LearnedPolicy, PPOConfig, PPOController
from models.controller.providers import PROVIDERS, conformal_forecasts
from models.controller.rollout import ForecastArrays, initial_jobs, run_controller
from models.controller.rules import PredictiveController, StaticController, peak_count
from simulator.config import ClusterParams, ServiceConfig
from simulator.metrics import SimLog, Summary, summarize
from simulator.run import simulate_totals

CONTROLLERS = ("static", "static-peak", "hpa", "keda", "predictive", "ppo", "oracle")
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
HORIZONS = (1, 2, 3, 4, 5, 6, 8, 10, 15)
"""Forecast horizons (minutes) handed to the controllers: the predictive rule reads those up
to startup + 2, the policy also the later ones (room to scale down)."""
CALIBRATION_DAYS = 7
"""At most this many days at the end of the history calibrate the rules."""
FORECASTER_MINUTES = 5.0
PPO_MINUTES = 14.0
HYBRID = "hybrid"


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
    learning: dict[str, Any] = field(default_factory=dict)
    """The ``ppo`` lane's decision latency and shield interventions."""

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


def best_static(service: ServiceConfig, arrivals: np.ndarray, j0: int, seed: int) -> int:
    """The fixed count that meets the SLA target most cheaply, in hindsight."""
    counts = np.arange(service.min_jobs, service.max_jobs + 1)
    params = lanes(service, len(counts))
    arr = np.repeat(arrivals[:, None], len(counts), axis=1)
    totals = simulate_totals(params, arr, counts, np.full(len(counts), j0), seed=seed)
    with np.errstate(divide="ignore", invalid="ignore"):
        sla = np.where(totals.arrivals > 0, 1 - totals.missed / totals.arrivals, 1.0)
    return int(counts[pick(totals.cost, sla, service.sla_target)])


def _describe(chosen: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in chosen.items() if not k.startswith("_"))


def _families(service: ServiceConfig, n_forecasts: int) -> dict[str, Family]:
    """The rules calibrated on history and the settings each may take.

    Args:
        service: The service (KEDA's thresholds scale with its capacity).
        n_forecasts: Forecast sources the predictive rule may choose among.
    """
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
                _forecast=list(range(n_forecasts)),
                target_utilization=[0.6, 0.7, 0.8, 0.9],
                quantile_level=[0.9, 0.95, 0.99],
                hold_steps=[0, 10],
            ),
        ),
    }


@dataclass
class PreparedScenario:
    """A scenario after calibration on its history: what evaluation and PPO need."""

    scenario: Scenario
    series: np.ndarray
    start: pd.Timestamp
    n_hist: int
    c0: int
    calibrations: dict[str, Calibration]
    provider: str
    calib_forecast: ForecastArrays
    """The chosen provider's forecasts on the calibration range [c0, n_hist)."""
    eval_forecast: ForecastArrays
    seconds: dict[str, float] = field(default_factory=dict)

    def rule_settings(self) -> RuleSettings:
        chosen = self.calibrations["predictive"].chosen
        return RuleSettings(
            target_utilization=float(chosen["target_utilization"]),
            quantile_level=float(chosen["quantile_level"]),
            hold_steps=int(chosen["hold_steps"]),
        )

    def training_source(self) -> EpisodeSource:
        """The calibration range as a PPO episode source (never the evaluation range)."""
        return EpisodeSource(
            name=self.scenario.name,
            arrivals=self.series[self.c0 : self.n_hist],
            forecast=self.calib_forecast.values[:, 0],
            horizons=self.calib_forecast.horizons,
            quantiles=self.calib_forecast.quantiles,
            service=self.scenario.service,
            start=self.start + pd.Timedelta(minutes=self.c0),
            rule=self.rule_settings(),
        )


def calibration_start(n_hist: int) -> int:
    """First step of the calibration range: at most CALIBRATION_DAYS before the history ends."""
    return n_hist - min(CALIBRATION_DAYS * 1440, int(0.4 * n_hist))


def _hybrid_arrays(
    forecaster: Any,
    name: str,
    start: pd.Timestamp,
    series: np.ndarray,
    c0: int,
    end: tuple[int, int],
) -> ForecastArrays:
    from models.controller.hybrid_provider import hybrid_forecasts

    # The hybrid trained on [0, c0) and held back the last 20% of that range for its own
    # checkpoint choice and calibration, so the tail levels are calibrated there.
    calib = (c0 - max(int(0.2 * c0), 1), c0)
    return hybrid_forecasts(forecaster, name, start, series, calib, end, HORIZONS, QUANTILES)


def prepare_scenario(scenario: Scenario, forecaster: Any = None) -> PreparedScenario:
    """Calibrate the rules on the end of the history and build every forecast needed.

    Args:
        scenario: The scenario.
        forecaster: The hybrid trained on histories before each calibration range, or
            None for the naive providers only.
    """
    clock: dict[str, float] = {}
    tick = time.perf_counter()
    trace = scenario_trace(scenario)
    n_hist = len(trace.split(scenario.history_fraction)[0])
    series = np.asarray(trace.counts, dtype=np.float64)
    n_all = len(series)
    service, seed = scenario.service, scenario.seed
    if service.startup_steps + 2 > max(HORIZONS):
        raise ValueError(f"scenario {scenario.name!r}: startup longer than the forecast horizons")
    # Calibration range: the end of the history; forecasts there are calibrated on
    # the history before it, so no rule sees its own calibration residuals.
    c0 = calibration_start(n_hist)
    sources: list[tuple[str, ForecastArrays, ForecastArrays]] = [
        (
            name,
            conformal_forecasts(series, (0, c0), (c0, n_hist), HORIZONS, QUANTILES, name),
            conformal_forecasts(series, (0, n_hist), (n_hist, n_all), HORIZONS, QUANTILES, name),
        )
        for name in PROVIDERS
    ]
    if forecaster is not None:
        both = _hybrid_arrays(forecaster, scenario.name, trace.start, series, c0, (c0, n_all))
        split = n_hist - c0
        sources.append(
            (
                HYBRID,
                replace(both, values=both.values[:split]),
                replace(both, values=both.values[split:]),
            )
        )
        clock["hybrid forecasts"] = time.perf_counter() - tick
    families = _families(service, len(sources))
    calibrations = calibrate(
        families,
        service,
        series[c0:n_hist],
        initial_jobs(series[c0], service),
        forecasts=[calib for _, calib, _ in sources],
        seed=seed,
    )
    clock["calibrate"] = time.perf_counter() - tick - clock.get("hybrid forecasts", 0.0)
    name, calib_fc, eval_fc = sources[int(calibrations["predictive"].chosen["_forecast"])]
    return PreparedScenario(
        scenario=scenario,
        series=series,
        start=trace.start,
        n_hist=n_hist,
        c0=c0,
        calibrations=calibrations,
        provider=name,
        calib_forecast=calib_fc,
        eval_forecast=eval_fc,
        seconds=clock,
    )


class _Timed:
    """Wraps a controller and records the wall time of each decision (seconds)."""

    def __init__(self, inner: PPOController) -> None:
        self.inner = inner
        self.name = inner.name
        self.times: list[float] = []

    def reset(self, params: ClusterParams) -> None:
        self.inner.reset(params)

    def decide(self, obs: Observation) -> np.ndarray:
        tick = time.perf_counter()
        out = self.inner.decide(obs)
        self.times.append(time.perf_counter() - tick)
        return out


def evaluate_scenario(
    prepared: PreparedScenario, policy: LearnedPolicy | None = None, keep_logs: bool = False
) -> ScenarioResult:
    """Score every controller (``ppo`` only with a policy) and the oracle on the evaluation range.

    Returns:
        The scores; the oracle's come from replaying its plan in the simulator.
    """
    clock = dict(prepared.seconds)
    scenario, series = prepared.scenario, prepared.series
    service, seed = scenario.service, scenario.seed
    a_eval = series[prepared.n_hist :]
    j0 = initial_jobs(a_eval[0], service)
    tick = time.perf_counter()
    plan = solve_oracle(ClusterParams.from_services([service]), a_eval, j0)
    clock["oracle"] = time.perf_counter() - tick

    # Every controller is one lane of a single evaluation run: same arrivals, same
    # initial state, same seed, same forecasts.
    tick = time.perf_counter()
    names = [c for c in CONTROLLERS if c != "ppo" or policy is not None]
    static_n = best_static(service, a_eval, j0, seed)
    peak_n = int(peak_count(a_eval[:, None], ClusterParams.from_services([service]))[0])
    chosen = {k: prepared.calibrations[k].chosen for k in ("hpa", "keda", "predictive")}
    families = _families(service, 1)
    members: list[tuple[Controller, list[int]]] = []
    settings_text: list[str] = []
    timed: _Timed | None = None
    for lane, name in enumerate(names):
        if name == "static":
            members.append((StaticController(static_n), [lane]))
            settings_text.append(f"jobs={static_n}")
        elif name == "static-peak":
            members.append((StaticController(peak_n, "static-peak"), [lane]))
            settings_text.append(f"jobs={peak_n}")
        elif name in ("hpa", "keda", "predictive"):
            settings = {k: np.array([v]) for k, v in chosen[name].items() if not k.startswith("_")}
            members.append((families[name].make(settings), [lane]))
            extra = f", forecast={prepared.eval_forecast.label}" if name == "predictive" else ""
            settings_text.append(_describe(chosen[name]) + extra)
        elif name == "ppo":
            assert policy is not None
            timed = _Timed(PPOController(policy, rule=prepared.rule_settings()))
            members.append((timed, [lane]))
            settings_text.append(
                f"{policy.mode}, shielded, forecast={prepared.eval_forecast.label}"
            )
        else:
            members.append((ScheduleController(plan.targets, "oracle"), [lane]))
            settings_text.append("perfect knowledge")
    n_lanes = len(names)
    fc = prepared.eval_forecast
    forecast = ForecastArrays(
        values=np.repeat(fc.values, n_lanes, axis=1),
        horizons=fc.horizons,
        quantiles=fc.quantiles,
        label=fc.label,
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
    runs = [ControllerRun(name, summaries[i], settings_text[i]) for i, name in enumerate(names)]
    learning: dict[str, Any] = {}
    if timed is not None:
        ms = 1000 * np.asarray(timed.times)
        learning = {
            "decision_ms_p50": round(float(np.percentile(ms, 50)), 4),
            "decision_ms_p99": round(float(np.percentile(ms, 99)), 4),
            "shield_interventions": dict(sorted(timed.inner.interventions.items())),
            "decisions": len(ms),
        }
    return ScenarioResult(
        name=scenario.name,
        runs=runs,
        forecast_label=fc.label,
        eval_steps=len(a_eval),
        seconds=clock,
        log=log if keep_logs else None,
        learning=learning,
    )


def run_scenario(
    scenario: Scenario,
    keep_logs: bool = False,
    forecaster: Any = None,
    policy: LearnedPolicy | None = None,
) -> ScenarioResult:
    """Calibrate on history, then score every controller on the evaluation range."""
    return evaluate_scenario(prepare_scenario(scenario, forecaster), policy, keep_logs)


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


@dataclass(frozen=True)
class Learning:
    """What the benchmark learns from the histories before scoring.

    Attributes:
        forecaster_minutes: Training budget of the hybrid forecaster; None uses the
            naive providers only.
        ppo: PPO's configuration; None scores no ``ppo`` unless ``policy`` is given.
        policy: A trained policy to score as ``ppo`` instead of training one.
        policy_label: Where ``policy`` came from (printed).
    """

    forecaster_minutes: float | None = FORECASTER_MINUTES
    ppo: PPOConfig | None = field(default_factory=lambda: PPOConfig(max_minutes=PPO_MINUTES))
    policy: LearnedPolicy | None = None
    policy_label: str = ""


def _histories(scenarios: list[Scenario]) -> list[Any]:
    from models.controller.hybrid_provider import HistorySeries

    out = []
    for sc in scenarios:
        trace = scenario_trace(sc)
        n_hist = len(trace.split(sc.history_fraction)[0])
        out.append(
            HistorySeries(
                name=sc.name,
                start=trace.start,
                series=np.asarray(trace.counts, dtype=np.float64),
                train_end=calibration_start(n_hist),
            )
        )
    return out


def train_forecaster(scenarios: list[Scenario], minutes: float, log: Callable[[str], None]) -> Any:
    """One hybrid for every scenario, trained on each history before its calibration range."""
    from models.controller.hybrid_provider import train_forecaster as train
    from models.forecaster.train import TrainConfig

    def progress(step: int, train_loss: float, holdout_loss: float) -> None:
        log(f"  hybrid step {step}: train {train_loss:.4f}, held-back {holdout_loss:.4f}")

    forecaster, _ = train(_histories(scenarios), TrainConfig(max_minutes=minutes), progress)
    return forecaster


def _prepare(scenario: Scenario, forecaster: Any) -> PreparedScenario:
    if forecaster is not None:
        import torch

        # Two workers share two cores: one thread each, or they slow each other down.
        torch.set_num_threads(1)
    return prepare_scenario(scenario, forecaster)


def _parallel(
    fn: Callable[..., Any],
    items: list[Any],
    extra: Any,
    workers: int,
    weight: Callable[[Any], float],
    done: Callable[[Any], None] | None = None,
) -> list[Any]:
    """``fn(item, extra)`` for each item, ``workers`` at a time, results in input order."""
    if workers <= 1:
        out = []
        for item in items:
            out.append(fn(item, extra))
            if done:
                done(out[-1])
        return out
    # Longest first, so the biggest item does not start last and run alone.
    order = sorted(range(len(items)), key=lambda i: -weight(items[i]))
    with ProcessPoolExecutor(max_workers=workers) as pool:
        futures = {i: pool.submit(fn, items[i], extra) for i in order}
        for fut in as_completed(futures.values()):
            if done:
                done(fut.result())
        return [futures[i].result() for i in range(len(items))]


def run_benchmark(
    scenarios: list[Scenario],
    workers: int = 2,
    progress: Callable[[ScenarioResult], None] | None = None,
    keep_logs: bool = False,
    learning: Learning | None = None,
    log: Callable[[str], None] | None = None,
    summary: dict[str, Any] | None = None,
) -> list[ScenarioResult]:
    """Learn on the histories, then score every scenario; results keep the input order.

    Args:
        scenarios: What to run.
        workers: Scenarios prepared and scored in parallel.
        progress: Called with each scenario's result as it finishes.
        keep_logs: Keep the evaluation logs (for the report).
        learning: Forecaster and PPO settings; None runs the rules only (no ``ppo``).
        log: Receives progress lines of the learning phases.
        summary: Filled with the time each phase took and the PPO training figures.
    """
    say = log or (lambda _: None)
    info = summary if summary is not None else {}
    learning = learning or Learning(forecaster_minutes=None, ppo=None)
    forecaster = None
    if learning.forecaster_minutes is not None:
        tick = time.perf_counter()
        minutes = learning.forecaster_minutes
        say(f"training the hybrid forecaster on the histories (<= {minutes} min)")
        forecaster = train_forecaster(scenarios, learning.forecaster_minutes, say)
        info["forecaster_train_seconds"] = round(time.perf_counter() - tick, 1)
        say(f"forecaster trained in {info['forecaster_train_seconds']} s")

    tick = time.perf_counter()
    prepared: list[PreparedScenario] = _parallel(
        _prepare,
        scenarios,
        forecaster,
        workers,
        lambda sc: _expected_steps(sc),
        lambda p: say(f"{p.scenario.name}: calibrated, predictive rule uses {p.provider}"),
    )
    info["prepare_seconds"] = round(time.perf_counter() - tick, 1)

    policy = learning.policy
    if policy is not None:
        info["policy"] = learning.policy_label
    elif learning.ppo is not None:
        from models.controller.ppo import train_ppo

        tick = time.perf_counter()
        cfg = learning.ppo
        say(f"training PPO ({cfg.mode}) on the calibration ranges (<= {cfg.max_minutes} min)")

        def ppo_progress(row: dict[str, float]) -> None:
            if len(ppo_rows) % 20 == 0:
                say(
                    f"  ppo {int(row['timesteps'])} steps ({row['seconds']:.0f} s): "
                    f"reward {row['rollout/reward']:.3f}, cost {row['rollout/cost']:.3f}, "
                    f"SLA {100 * row['rollout/sla_compliance']:.2f}%"
                )
            ppo_rows.append(row)

        ppo_rows: list[dict[str, float]] = []
        policy, report = train_ppo(
            [p.training_source() for p in prepared], cfg, progress=ppo_progress
        )
        info.update(
            ppo_train_seconds=round(report.seconds, 1),
            ppo_timesteps=report.timesteps,
            ppo_stopped_by=report.stopped_by,
            ppo_mode=cfg.mode,
        )
        say(
            f"PPO trained in {report.seconds:.0f} s, {report.timesteps} steps ({report.stopped_by})"
        )

    tick = time.perf_counter()
    results: list[ScenarioResult] = _parallel(
        _evaluate,
        prepared,
        (policy, keep_logs),
        workers,
        lambda p: float(len(p.series) - p.n_hist),
        progress,
    )
    info["evaluate_seconds"] = round(time.perf_counter() - tick, 1)
    return results


def _evaluate(
    prepared: PreparedScenario, extra: tuple[LearnedPolicy | None, bool]
) -> ScenarioResult:
    return evaluate_scenario(prepared, extra[0], extra[1])


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


def _load_policy(model_uri: str) -> LearnedPolicy:
    from autoscaler.runtime import registry_config
    from autoscaler.settings import build_settings
    from models.controller.publish import load_policy

    policy, _ = load_policy(registry_config(build_settings(), "bench"), model_uri)
    return policy


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
    parser.add_argument(
        "--forecaster-minutes",
        type=float,
        default=FORECASTER_MINUTES,
        help=f"training budget of the hybrid forecaster (default {FORECASTER_MINUTES})",
    )
    parser.add_argument(
        "--no-forecaster",
        action="store_true",
        help="no hybrid: the predictive rule and PPO use the naive providers only",
    )
    parser.add_argument(
        "--ppo-minutes",
        type=float,
        default=PPO_MINUTES,
        help=f"PPO training budget (default {PPO_MINUTES})",
    )
    parser.add_argument(
        "--ppo-timesteps", type=int, default=None, help="PPO training steps at most"
    )
    parser.add_argument(
        "--ppo-mode",
        choices=["residual", "direct"],
        default="residual",
        help="residual: PPO adjusts the calibrated rule's target (default); direct: the job count",
    )
    parser.add_argument(
        "--model-uri",
        default=None,
        help="score this registered controller as ppo instead of training one "
        "(e.g. models:/scaling-controller@champion)",
    )
    parser.add_argument("--no-ppo", action="store_true", help="score the rules only")
    args = parser.parse_args(argv)
    if args.forecaster_minutes <= 0 or args.ppo_minutes <= 0:
        parser.error("--forecaster-minutes and --ppo-minutes must be > 0")
    if args.ppo_timesteps is not None and args.ppo_timesteps < 1:
        parser.error("--ppo-timesteps must be >= 1")

    scenarios = load_scenarios(args.scenarios, args.traces_dir)
    if args.no_synthetic:
        scenarios = [s for s in scenarios if s.trace_path is not None]
    if args.only:
        scenarios = [s for s in scenarios if s.name in set(args.only)]
        if not scenarios:
            parser.error(f"no scenario named {args.only}")
    start = time.perf_counter()

    def say(line: str) -> None:
        print(f"[{time.perf_counter() - start:6.1f}s] {line}", file=sys.stderr, flush=True)

    def report(res: ScenarioResult) -> None:
        took = ", ".join(f"{k} {v:.1f}s" for k, v in res.seconds.items())
        say(f"{res.name}: {res.eval_steps} steps scored ({took})")

    ppo_cfg = None
    if not args.no_ppo and args.model_uri is None:
        ppo_cfg = PPOConfig(
            mode=args.ppo_mode,
            max_minutes=args.ppo_minutes,
            **({"total_timesteps": args.ppo_timesteps} if args.ppo_timesteps else {}),
        )
    policy = None
    if args.model_uri is not None and not args.no_ppo:
        try:
            policy = _load_policy(args.model_uri)
        except Exception as exc:
            parser.error(f"cannot load {args.model_uri}: {exc}")
    learning = Learning(
        forecaster_minutes=None if args.no_forecaster else args.forecaster_minutes,
        ppo=ppo_cfg,
        policy=policy,
        policy_label=args.model_uri or "",
    )
    summary: dict[str, Any] = {}
    results = run_benchmark(
        scenarios,
        workers=args.workers,
        progress=report,
        learning=learning,
        log=say,
        summary=summary,
    )
    print(format_table(results))
    timing = ", ".join(f"{k} {v}" for k, v in summary.items())
    print(f"\n{len(results)} scenarios in {time.perf_counter() - start:.1f} s ({timing})")
    for res in results:
        if res.learning:
            print(
                f"ppo on {res.name}: decision p50 {res.learning['decision_ms_p50']} ms, "
                f"p99 {res.learning['decision_ms_p99']} ms; shield interventions "
                f"{res.learning['shield_interventions']}"
            )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        records = [rec for res in results for rec in res.records()]
        args.json.write_text(json.dumps(records, indent=2) + "\n")
        print(f"wrote {len(records)} records to {args.json}")
        side = args.json.with_name(args.json.name + ".learning.json")
        side.write_text(
            json.dumps({**summary, "scenarios": {r.name: r.learning for r in results}}, indent=2)
            + "\n"
        )
        print(f"wrote training and decision figures to {side}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
