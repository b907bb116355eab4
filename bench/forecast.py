"""Forecast benchmark: every model on every trace, scored at 15, 60 and 120 minutes.

    python -m bench.forecast --traces-dir DIR --json PATH

Every CSV in DIR (loaded with ``mode="even"``) and, unless ``--no-synthetic``, the
project's synthetic services are prepared by :mod:`models.forecaster.protocol`:
70 % history, at most 300 whole-hour origins in the evaluation range, quantile
levels 0.05, 0.1, 0.5, 0.9, 0.95. Each model forecasts every origin; forecasts are
scored by :func:`models.forecaster.metrics.score` (DESIGN.md section 11) with the
MASE scale of the series' own history range.

Models: ``hybrid`` (the learned forecaster, trained once on every series' history range
within ``--hybrid-minutes``, then calibrated on its own held-back tail of that range),
``seasonal_naive_day``, ``seasonal_naive_week``, ``auto_ets``, ``mstl``
(:mod:`models.forecaster.baselines`).

With ``--json PATH`` and the hybrid run, ``PATH.hybrid.json`` (next to it, ``.hybrid``
before the suffix) holds its training time and steps, the inference time for 1,000
services in one batch, the held-back coverage before and after calibration, and the
anomaly score checked against NAB's labelled windows of nyc_taxi (when the trace and
``nab_anomaly_windows.json`` are in DIR).

JSON: a list of records with the keys ``trace, model, horizon_min, mase, wql,
coverage_80, coverage_90, is_real``. ``coverage_90`` is the share inside
``[q0.05, q0.95]`` (a 90 % interval; the levels stop at 0.05/0.95); ``is_real`` is
false for synthetic services. A metric that is undefined (wQL when every actual
value is 0) is null.

The summary gives, per model and horizon, the geometric mean over the *real*
traces of ``wql / wql(seasonal_naive_day)`` and the range of ``coverage_80``.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bench.cli import trace_bench_parser
from models.forecaster.baselines import BASELINES
from models.forecaster.metrics import HorizonScore, mase_scale, score
from models.forecaster.protocol import (
    HORIZONS,
    MAX_ORIGINS,
    QUANTILES,
    PreparedSeries,
    check_forecasts,
    origin_days,
    prepare_synthetic,
    prepare_trace,
    targets,
)
from simulator.traces import TraceError, list_traces

MODELS = ("hybrid", "seasonal_naive_day", "seasonal_naive_week", "auto_ets", "mstl")
"""Every model name the benchmark knows, in report order."""
REFERENCE = "seasonal_naive_day"
"""The model the summary's wQL ratios divide by."""
JSON_KEYS = (
    "trace",
    "model",
    "horizon_min",
    "mase",
    "wql",
    "coverage_80",
    "coverage_90",
    "is_real",
)


@dataclass(frozen=True)
class RunSpec:
    """What every model is asked for.

    Attributes:
        horizons: Horizons in minutes (the last-but-one forecast axis).
        quantiles: Ascending quantile levels (the last axis).
        workers: Processes a runner may use.
    """

    horizons: tuple[int, ...] = HORIZONS
    quantiles: tuple[float, ...] = QUANTILES
    workers: int = 2


Runner = Callable[[Sequence[PreparedSeries], RunSpec], dict[str, np.ndarray]]
"""``runner(all_series, spec) -> {series name: forecasts (n_origins, H, Q)}``.

A runner gets every series at once so a global model can train once on all
history ranges (``s.series[:s.history_end]``) before forecasting each origin."""


CHUNK_DAYS = 8
"""A baseline job covers at most this many calendar days of one series' origins."""


def forecast_series(
    name: str, series: PreparedSeries, spec: RunSpec, origins: np.ndarray | None = None
) -> np.ndarray:
    """One baseline's forecasts for one series (module-level so workers can run it).

    Args:
        name: Key of :data:`models.forecaster.baselines.BASELINES`.
        series: The prepared series.
        spec: Horizons and quantiles.
        origins: A subset of ``series.origins`` made of whole calendar days (the
            daily-refit baselines then give the same forecasts as on all origins);
            None for all.

    Returns:
        Forecasts of shape ``(len(origins), len(spec.horizons), len(spec.quantiles))``.
    """
    fn = BASELINES[name]
    return fn(
        series.series,
        series.start,
        series.history_end,
        series.origins if origins is None else origins,
        spec.horizons,
        spec.quantiles,
    )


def day_chunks(series: PreparedSeries, max_days: int = CHUNK_DAYS) -> list[np.ndarray]:
    """Split a series' origins into runs of at most ``max_days`` whole calendar days.

    Args:
        series: The prepared series.
        max_days: Calendar days (with origins) per chunk.

    Returns:
        Consecutive origin arrays that together are ``series.origins``; no day is split,
        so a model refitted at the first origin of each day forecasts the same.
    """
    days = origin_days(series.start, series.origins)
    distinct = np.unique(days)
    bounds = distinct[::max_days]
    cuts = np.searchsorted(days, bounds[1:])
    return np.split(series.origins, cuts)


def run_baseline(
    name: str, all_series: Sequence[PreparedSeries], spec: RunSpec
) -> dict[str, np.ndarray]:
    """Run a per-series baseline over every series, ``spec.workers`` processes at a time.

    With several workers a long series is split into :func:`day_chunks` so both
    workers stay busy; the forecasts are the same as in one piece.

    Args:
        name: Key of :data:`models.forecaster.baselines.BASELINES`.
        all_series: Series to forecast.
        spec: Horizons, quantiles and workers.

    Returns:
        Forecasts by series name.
    """
    if spec.workers <= 1:
        return {s.name: forecast_series(name, s, spec) for s in all_series}
    jobs = [(s, chunk) for s in all_series for chunk in day_chunks(s)]
    # Most origin-days first, so the biggest job does not start last and run alone.
    jobs.sort(key=lambda job: -len(np.unique(origin_days(job[0].start, job[1]))))
    with ProcessPoolExecutor(max_workers=min(spec.workers, len(jobs))) as pool:
        futures = [
            (s.name, pool.submit(forecast_series, name, s, spec, chunk)) for s, chunk in jobs
        ]
        parts: dict[str, list[tuple[int, np.ndarray]]] = {s.name: [] for s in all_series}
        for (series_name, fut), (_, chunk) in zip(futures, jobs, strict=True):
            parts[series_name].append((int(chunk[0]), fut.result()))
    return {
        series_name: np.concatenate([f for _, f in sorted(pieces, key=lambda p: p[0])])
        for series_name, pieces in parts.items()
    }


RUNNERS: dict[str, Runner] = {
    # Baselines: fitted per series, in a process pool.
    **{name: partial(run_baseline, name) for name in BASELINES},
    # The learned model needs its training configuration: main() adds a HybridRunner.
}
"""Available models by name (a subset of :data:`MODELS`)."""


# ------------------------------------------------------------------ the learned model


HYBRID_MINUTES = 9.5
"""Training budget of the hybrid, all members (the target: at most 10 minutes on 2 cores)."""
HYBRID_STEPS = 2000
"""Steps per member: held-back loss stopped improving after about 1,600 steps in a 9-minute
single-network run, so three shorter runs averaged use the budget better."""
HYBRID_MEMBERS = 3
INFERENCE_BATCH = 1000
"""Services per batch of the inference timing."""
NAB_FILE = "nab_anomaly_windows.json"
NAB_TRACE = "nyc_taxi_30min"
NAB_KEY = "realKnownCause/nyc_taxi.csv"


class HybridRunner:
    """Trains the hybrid once on every series' history range, then forecasts every origin.

    Training windows end before ``history_end``; a forecast at origin ``o`` reads the
    sequence features of minute ``o - 1``, so only ``series[:o]``. After a run the
    trained forecaster and its report stay on the object for the side results (anomaly
    windows, inference timing).
    """

    def __init__(self, config: Any) -> None:
        self.config = config
        self.forecaster: Any = None
        self.report: Any = None

    def __call__(
        self, all_series: Sequence[PreparedSeries], spec: RunSpec
    ) -> dict[str, np.ndarray]:
        from models.forecaster.evaluate import LEVELS, hybrid_forecasts
        from models.forecaster.train import SeriesData, train

        if tuple(spec.horizons) != HORIZONS or tuple(spec.quantiles) != LEVELS:
            raise ValueError("the hybrid runner forecasts the benchmark's horizons and levels only")
        series = [
            SeriesData(s.name, s.start, np.asarray(s.series), s.history_end) for s in all_series
        ]
        tick = time.perf_counter()

        def progress(step: int, train_loss: float, holdout_loss: float) -> None:
            print(
                f"  hybrid step {step}: train {train_loss:.4f}, held-back {holdout_loss:.4f} "
                f"({time.perf_counter() - tick:.0f} s)",
                file=sys.stderr,
                flush=True,
            )

        self.forecaster, self.report = train(series, self.config, progress=progress)
        return hybrid_forecasts(self.forecaster, all_series)

    def side_results(
        self, all_series: Sequence[PreparedSeries], traces_dir: Path
    ) -> dict[str, Any]:
        """Training time, 1,000-service inference time and the anomaly-window check."""
        if self.forecaster is None or self.report is None:
            raise ValueError("run the hybrid first")
        out: dict[str, Any] = {
            "train_seconds": round(self.report.seconds, 1),
            "train_steps": self.report.steps,
            "best_step": self.report.best_step,
            "member_best_steps": self.report.member_best_steps,
            "device": self.report.device,
            "threads": torch_threads(),
            "inference_1000_services_ms": round(self._inference_ms(all_series), 1),
            "holdout_coverage_80_before": self.forecaster.calibration.coverage_before,
            "holdout_coverage_80_after": self.forecaster.calibration.coverage_after,
        }
        nyc = [s for s in all_series if s.name == NAB_TRACE]
        labels = traces_dir / NAB_FILE
        if nyc and labels.is_file():
            out["anomaly"] = self._anomaly(nyc[0], labels)
        return out

    def _inference_ms(self, all_series: Sequence[PreparedSeries]) -> float:
        from models.forecaster.train import SeriesData, cut_windows

        s = max(all_series, key=lambda p: len(p.series))
        pos = np.linspace(10080, len(s.series) - 1, INFERENCE_BATCH).astype(np.int64)
        data = SeriesData(s.name, s.start, np.asarray(s.series), len(s.series))
        w = cut_windows(data, pos, self.forecaster.horizons, with_targets=False)
        times = []
        for _ in range(5):
            tick = time.perf_counter()
            # The whole serving path: inputs from the sequence features, network, calibration.
            inputs = w.inputs(np.arange(len(w)), self.forecaster.horizons)
            self.forecaster.predict(inputs, [f"svc-{i}" for i in range(len(w))])
            times.append(time.perf_counter() - tick)
        return float(np.median(times) * 1000)

    def _anomaly(self, s: PreparedSeries, labels: Path) -> dict[str, Any]:
        from models.forecaster.anomaly import (
            DEFAULT_LEAD,
            HIGH,
            LOW,
            anomaly_score,
            window_detection,
        )
        from models.forecaster.train import SeriesData, cut_windows

        windows = json.loads(labels.read_text()).get(NAB_KEY, [])
        fc = self.forecaster
        t = pd.date_range(s.start, periods=len(s.series), freq="min")
        # Every 30 minutes from the second week on: the trace's own step.
        scored = np.arange(10080, len(s.series), 30)
        data = SeriesData(s.name, s.start, np.asarray(s.series), len(s.series))
        w = cut_windows(data, scored - DEFAULT_LEAD, fc.horizons, with_targets=False)
        q = fc.predict_windows(w)
        j = fc.horizons.index(DEFAULT_LEAD)
        lo, hi = q[:, j, fc.quantiles.index(LOW)], q[:, j, fc.quantiles.index(HIGH)]
        scale = w.inputs(np.arange(len(w)), fc.horizons).scale
        scores = anomaly_score(s.series[scored], lo, hi, scale)
        in_window = np.zeros(len(scored), dtype=bool)
        per_window = []
        for start, end in windows:
            inside = (t[scored] >= pd.Timestamp(start)) & (t[scored] <= pd.Timestamp(end))
            in_window |= inside
            per_window.append(
                {
                    "window": [start, end],
                    "in_evaluation_range": bool(pd.Timestamp(start) >= t[s.history_end]),
                    "max_score": round(float(np.nanmax(scores[inside])), 3)
                    if inside.any()
                    else None,
                }
            )
        result: dict[str, Any] = {"trace": s.name, "lead_min": DEFAULT_LEAD, "windows": per_window}
        result.update({k: round(v, 4) for k, v in window_detection(scores, in_window).items()})
        return result


def torch_threads() -> int:
    import torch

    return int(torch.get_num_threads())


@dataclass
class ModelResult:
    """One model's scores on every series."""

    model: str
    scores: dict[str, list[HorizonScore]]
    seconds: float


def evaluate(
    model: str, runner: Runner, all_series: Sequence[PreparedSeries], spec: RunSpec
) -> ModelResult:
    """Run one model, check its forecasts and score them.

    Args:
        model: Model name (for messages and records).
        runner: Produces the forecasts.
        all_series: Prepared series.
        spec: Horizons, quantiles, workers.

    Returns:
        Per-series scores and the runner's wall time.

    Raises:
        ValueError: If the runner misses a series or breaks the forecast conventions.
    """
    tick = time.perf_counter()
    forecasts = runner(all_series, spec)
    seconds = time.perf_counter() - tick
    scores: dict[str, list[HorizonScore]] = {}
    for s in all_series:
        if s.name not in forecasts:
            raise ValueError(f"model {model!r} returned no forecasts for {s.name!r}")
        f = check_forecasts(
            forecasts[s.name], len(s.origins), spec.horizons, spec.quantiles, f"{model}/{s.name}"
        )
        y = targets(s.series, s.origins, spec.horizons)
        scale = mase_scale(s.series[: s.history_end])
        scores[s.name] = score(y, f, spec.quantiles, scale, spec.horizons)
    return ModelResult(model, scores, seconds)


def _finite(value: float) -> float | None:
    # JSON has no NaN: an undefined metric is null.
    return round(value, 6) if math.isfinite(value) else None


def records(
    results: Sequence[ModelResult], all_series: Sequence[PreparedSeries]
) -> list[dict[str, Any]]:
    """JSON records, one per (trace, model, horizon), with :data:`JSON_KEYS`.

    Args:
        results: Scores of each model.
        all_series: The series, in report order.

    Returns:
        Records; an undefined metric (NaN) is None.
    """
    out: list[dict[str, Any]] = []
    for s in all_series:
        for res in results:
            for sc in res.scores[s.name]:
                out.append(
                    {
                        "trace": s.name,
                        "model": res.model,
                        "horizon_min": sc["horizon_min"],
                        "mase": _finite(sc["mase"]),
                        "wql": _finite(sc["wql"]),
                        "coverage_80": _finite(sc["coverage_80"]),
                        "coverage_90": _finite(sc["coverage_90"]),
                        "is_real": s.is_real,
                    }
                )
    return out


def format_table(recs: Sequence[dict[str, Any]]) -> str:
    """The per-row table.

    Args:
        recs: Output of :func:`records`.

    Returns:
        One line per (trace, model, horizon) under a header.
    """

    def num(v: float | None, fmt: str) -> str:
        return "n/a" if v is None else format(v, fmt)

    head = (
        f"{'trace':<30} {'model':<20} {'h min':>5} {'MASE':>8} {'wQL':>8} {'cov80':>6} {'cov90':>6}"
    )
    lines = [head, "-" * len(head)]
    for r in recs:
        lines.append(
            f"{r['trace']:<30} {r['model']:<20} {r['horizon_min']:>5d} "
            f"{num(r['mase'], '8.3f'):>8} {num(r['wql'], '8.4f'):>8} "
            f"{num(r['coverage_80'], '6.3f'):>6} {num(r['coverage_90'], '6.3f'):>6}"
        )
    return "\n".join(lines)


def format_summary(
    recs: Sequence[dict[str, Any]], results: Sequence[ModelResult], horizons: Sequence[int]
) -> str:
    """Per model and horizon over the real traces: geometric-mean wQL ratio, coverage range.

    A trace enters a ratio only where both wQLs are finite and > 0; ``n`` says how
    many did.

    Args:
        recs: Output of :func:`records`.
        results: The model runs (for order and wall time).
        horizons: Horizons to summarize.

    Returns:
        The summary table.
    """
    real = [r for r in recs if r["is_real"]]
    ref = {(r["trace"], r["horizon_min"]): r["wql"] for r in real if r["model"] == REFERENCE}
    head = (
        f"{'model':<20} {'h min':>5} {'wQL/' + REFERENCE:>26} {'n':>3} "
        f"{'cov80 range':>13} {'wall s':>8}"
    )
    lines = [
        f"Summary over the real traces (geometric mean of wQL / {REFERENCE} wQL)",
        head,
        "-" * len(head),
    ]
    for res in results:
        for h in horizons:
            rows = [r for r in real if r["model"] == res.model and r["horizon_min"] == h]
            logs = [
                math.log(r["wql"] / ref[(r["trace"], h)])
                for r in rows
                if r["wql"] and ref.get((r["trace"], h))
            ]
            ratio = f"{math.exp(sum(logs) / len(logs)):.3f}" if logs else "n/a"
            cov = [r["coverage_80"] for r in rows if r["coverage_80"] is not None]
            span = f"{min(cov):.2f}-{max(cov):.2f}" if cov else "n/a"
            lines.append(
                f"{res.model:<20} {h:>5d} {ratio:>26} {len(logs):>3d} {span:>13} "
                f"{res.seconds:>8.1f}"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark (module docstring); bad input exits with status 2 and a message.

    Args:
        argv: Command-line arguments (default ``sys.argv[1:]``).

    Returns:
        0 on success.
    """
    from autoscaler.settings import build_settings

    settings = build_settings()
    parser = trace_bench_parser(
        "python -m bench.forecast", __doc__.split("\n\n")[0], settings.traces_dir
    )
    parser.add_argument(
        "--models",
        default=None,
        help=f"comma-separated models to run (default: all available of {', '.join(MODELS)})",
    )
    parser.add_argument(
        "--max-origins",
        type=int,
        default=MAX_ORIGINS,
        help=f"at most this many forecast origins per series (default {MAX_ORIGINS})",
    )
    parser.add_argument("--no-synthetic", action="store_true", help="skip the synthetic services")
    parser.add_argument("--workers", type=int, default=2, help="processes (default 2)")
    parser.add_argument(
        "--hybrid-minutes",
        type=float,
        default=HYBRID_MINUTES,
        help=f"training budget of the hybrid in minutes (default {HYBRID_MINUTES})",
    )
    parser.add_argument(
        "--hybrid-steps",
        type=int,
        default=HYBRID_STEPS,
        help=f"training steps per ensemble member (default {HYBRID_STEPS})",
    )
    parser.add_argument(
        "--hybrid-members",
        type=int,
        default=HYBRID_MEMBERS,
        help=f"networks in the hybrid's ensemble (default {HYBRID_MEMBERS})",
    )
    args = parser.parse_args(argv)
    if args.hybrid_minutes <= 0 or args.hybrid_steps < 1 or args.hybrid_members < 1:
        parser.error("--hybrid-minutes must be > 0, --hybrid-steps and --hybrid-members >= 1")

    from models.forecaster.train import TrainConfig

    hybrid = HybridRunner(
        TrainConfig(
            max_minutes=args.hybrid_minutes,
            max_steps=args.hybrid_steps,
            members=args.hybrid_members,
        )
    )
    runners: dict[str, Runner] = {"hybrid": hybrid, **RUNNERS}
    available = [m for m in MODELS if m in runners]
    if args.models is None:
        models = available
    else:
        models = [m.strip() for m in args.models.split(",") if m.strip()]
        unknown = [m for m in models if m not in runners]
        if unknown or not models:
            parser.error(
                f"unknown or unavailable model(s) {unknown or args.models!r}; "
                f"choose from {', '.join(available)}"
            )
    if args.max_origins < 1 or args.workers < 1:
        parser.error("--max-origins and --workers must be >= 1")

    spec = RunSpec(workers=args.workers)
    start = time.perf_counter()
    try:
        paths = list_traces(args.traces_dir)
        if not paths:
            raise TraceError(
                f"{args.traces_dir}: no *.csv traces; point --traces-dir at a folder of "
                "timestamp,value CSV files"
            )
        all_series = [
            prepare_trace(p, horizons=spec.horizons, max_origins=args.max_origins) for p in paths
        ]
    except TraceError as exc:
        parser.error(str(exc))
    if not args.no_synthetic:
        all_series += prepare_synthetic(horizons=spec.horizons, max_origins=args.max_origins)
    print(
        f"[{time.perf_counter() - start:6.1f}s] prepared {len(all_series)} series "
        f"({sum(len(s.origins) for s in all_series)} origins)",
        file=sys.stderr,
        flush=True,
    )

    results: list[ModelResult] = []
    for model in models:
        results.append(evaluate(model, runners[model], all_series, spec))
        print(
            f"[{time.perf_counter() - start:6.1f}s] {model}: {results[-1].seconds:.1f} s",
            file=sys.stderr,
            flush=True,
        )

    recs = records(results, all_series)
    print(format_table(recs))
    print()
    print(format_summary(recs, results, spec.horizons))
    print(
        f"\n{len(all_series)} series, {len(models)} models in {time.perf_counter() - start:.1f} s"
    )
    side: dict[str, Any] | None = None
    if hybrid.forecaster is not None:
        side = hybrid.side_results(all_series, args.traces_dir)
        print()
        print(format_hybrid(side))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(recs, indent=2) + "\n")
        print(f"wrote {len(recs)} records to {args.json}")
        if side is not None:
            extra = args.json.with_name(args.json.stem + ".hybrid.json")
            extra.write_text(json.dumps(side, indent=2) + "\n")
            print(f"wrote the hybrid's training, timing and anomaly results to {extra}")
    return 0


def format_hybrid(side: dict[str, Any]) -> str:
    """The hybrid's side results as text."""
    lines = [
        f"hybrid: trained {side['train_steps']} steps in {side['train_seconds']} s on "
        f"{side['device']} ({side['threads']} threads), best step per member "
        f"{side['member_best_steps']}; "
        f"inference for 1,000 services in one batch {side['inference_1000_services_ms']} ms",
    ]
    before, after = side["holdout_coverage_80_before"], side["holdout_coverage_80_after"]
    lines.append(
        "held-back coverage_80 before -> after calibration: "
        + ", ".join(f"{k} {before[k]:.3f} -> {after.get(k, math.nan):.3f}" for k in before)
    )
    anomaly = side.get("anomaly")
    if anomaly:
        lines.append(
            f"anomaly score on {anomaly['trace']} vs NAB windows (lead {anomaly['lead_min']} "
            f"min): AUC {anomaly['auc']:.3f}, flagged (score > 1) in windows "
            f"{anomaly['flag_rate_in']:.3f}, outside {anomaly['flag_rate_out']:.3f}; mean "
            f"score in {anomaly['mean_in']:.3f}, outside {anomaly['mean_out']:.3f}"
        )
        for w in anomaly["windows"]:
            where = "evaluation" if w["in_evaluation_range"] else "history"
            lines.append(
                f"  window {w['window'][0]} .. {w['window'][1]} ({where}): max {w['max_score']}"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
