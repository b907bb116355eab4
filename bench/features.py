"""Feature-engineering speed: compute_features on S services x D days of one-minute data.

    python -m bench.features [--services 10] [--days 30] [--repeat 3] [--json PATH]

Data (built once, not timed): synthetic traffic from ``simulator.synthetic`` for copies of
``default_services()`` with distinct ids and base_eps spread from 0.5x to 2x, run
through the cluster simulator with a reactive schedule (jobs for the last 10 minutes'
peak at 75 % utilization, some job failures), and turned into ``event_metrics`` /
``system_metrics`` rows by ``simulator.metrics``; all four tables are put in their
contracts with ``features.contracts.conform``. Generating 10 x 30 days takes about 40 s,
most of it the per-minute latency percentiles of ``simulator.metrics``.

Timed (median of ``--repeat`` runs): ``compute_features`` over the whole range with the
sequence arrays for the last 2 days, as the features flow materialises them
(``feature_build_s``), and once more with the arrays for every minute
(``feature_build_all_sequences_s``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time
from pathlib import Path

import numpy as np
import pandas as pd

from features.contracts import conform
from features.engineering import compute_features
from features.sources import profiles_frame
from simulator.config import ClusterParams, ServiceConfig
from simulator.metrics import event_metrics, system_metrics
from simulator.run import simulate_schedule
from simulator.synthetic import SyntheticConfig, default_services, generate

SEQUENCE_DAYS = 2
"""Days of sequence arrays in the main timing (the serving store keeps the last couple)."""


@dataclasses.dataclass(frozen=True)
class Tables:
    """The four input tables of compute_features, in their contracts."""

    event_metrics: pd.DataFrame
    system_metrics: pd.DataFrame
    calendar: pd.DataFrame
    profiles: pd.DataFrame

    @property
    def rows(self) -> int:
        return len(self.event_metrics)


def make_tables(services: int, days: int, seed: int = 0) -> Tables:
    """Simulated metrics of ``services`` services over ``days`` days.

    Args:
        services: Number of services (copies of the three default profiles).
        days: Length in days.
        seed: Root seed of traffic and simulator.

    Returns:
        Contract-conformed event_metrics, system_metrics, calendar and profiles.
    """
    base = default_services()
    specs = tuple(
        dataclasses.replace(
            base[i % len(base)],
            service_id=f"{base[i % len(base)].service_id}-{i}",
            base_eps=base[i % len(base)].base_eps * (0.5 + 1.5 * i / max(services - 1, 1)),
        )
        for i in range(services)
    )
    data = generate(SyntheticConfig(days=days, services=specs, seed=seed))
    arrivals = data.events["events_in"].to_numpy(dtype=np.float64).reshape(services, -1).T
    configs = [
        ServiceConfig(
            service_id=spec.service_id,
            job_capacity_eps=50.0,
            job_startup_s=90.0,
            max_jobs=400,
            max_step=10,
            job_failure_rate_per_hour=0.02,
            criticality=1 + i % 3,
            daily_budget=float(spec.base_eps) * 0.2,
        )
        for i, spec in enumerate(specs)
    ]
    params = ClusterParams.from_services(configs)
    # Reactive schedule: enough jobs for the recent peak, so queues form on sudden rises.
    recent_peak = pd.DataFrame(arrivals).rolling(10, min_periods=1).max().to_numpy()
    targets = np.ceil(recent_peak / (params.job_step_capacity * 0.75)).astype(np.int64)
    log = simulate_schedule(
        params, arrivals, targets, targets[0], start=data.config.start, seed=seed
    )
    profiles = profiles_frame(configs, data.config.start)
    return Tables(
        event_metrics=conform(event_metrics(log), "event_metrics").frame,
        system_metrics=conform(system_metrics(log), "system_metrics").frame,
        calendar=conform(data.calendar, "business_calendar").frame,
        profiles=conform(profiles, "service_profiles").frame,
    )


def time_build(tables: Tables, repeat: int, sequences_since: pd.Timestamp | None) -> float:
    """Median wall time of compute_features over all rows, seconds.

    Args:
        tables: Input tables.
        repeat: Runs to take the median of.
        sequences_since: First event_timestamp of the sequence rows; None = every minute.

    Returns:
        Median seconds of one call.
    """
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        compute_features(
            tables.event_metrics,
            tables.system_metrics,
            tables.calendar,
            tables.profiles,
            sequences_since=sequences_since,
        )
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.features", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--services", type=int, default=10)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--repeat", type=int, default=3, help="runs per timing (median)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None, help="write the result here")
    args = parser.parse_args(argv)
    if args.services < 1 or args.days < 1 or args.repeat < 1:
        parser.error("--services, --days and --repeat must be >= 1")

    start = time.perf_counter()
    tables = make_tables(args.services, args.days, args.seed)
    generate_s = time.perf_counter() - start
    last_ts = tables.event_metrics["ts"].max()
    recent = last_ts - pd.Timedelta(days=SEQUENCE_DAYS)
    build_s = time_build(tables, args.repeat, recent)
    build_all_s = time_build(tables, args.repeat, None)

    print(
        f"{'services':>8} {'days':>5} {'rows':>9} {'generate_s':>11} "
        f"{'feature_build_s':>16} {'all_sequences_s':>16}"
    )
    print(
        f"{args.services:>8} {args.days:>5} {tables.rows:>9} {generate_s:>11.1f} "
        f"{build_s:>16.2f} {build_all_s:>16.2f}"
    )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        result = {
            "services": args.services,
            "days": args.days,
            "rows": tables.rows,
            "feature_build_s": round(build_s, 3),
            "feature_build_all_sequences_s": round(build_all_s, 3),
            "sequence_days": SEQUENCE_DAYS,
            "repeat": args.repeat,
        }
        args.json.write_text(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
