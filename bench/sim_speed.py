"""Simulator throughput: a fixed-policy batch rollout, in service-steps per second.

    python -m bench.sim_speed [--services 10000] [--steps 1440] [--json PATH]

Every service runs a fixed job count against its own noisy daily-cycle arrivals
(no controller in the loop, no per-step log kept), so the figure is the
simulator's own speed.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from simulator.config import ClusterParams, ServiceConfig
from simulator.run import simulate_totals


def measure(services: int, steps: int, seed: int = 0) -> float:
    """Service-steps per second of one batch rollout (best of three)."""
    rng = np.random.default_rng(seed)
    params = ClusterParams.from_services(
        [
            ServiceConfig(service_id=f"s{i}", job_startup_s=float(rng.integers(0, 300)))
            for i in range(services)
        ]
    )
    minute = np.arange(steps)[:, None]
    base = rng.uniform(200, 2000, services)[None, :]
    rate = base * (1 + 0.5 * np.sin(2 * np.pi * minute / 1440 + rng.uniform(0, 6.3, services)))
    arrivals = rng.poisson(rate).astype(np.float64)
    jobs = np.ceil(arrivals.max(axis=0) / params.job_step_capacity).astype(np.int64)
    best = np.inf
    for _ in range(3):
        start = time.perf_counter()
        simulate_totals(params, arrivals, jobs, jobs, seed=seed)
        best = min(best, time.perf_counter() - start)
    return services * steps / best


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.sim_speed", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--services", type=int, default=10_000)
    parser.add_argument("--steps", type=int, default=1440)
    parser.add_argument("--json", type=Path, default=None, help="write the result here")
    args = parser.parse_args(argv)
    rate = measure(args.services, args.steps)
    print(f"{'services':>10} {'steps':>7} {'service-steps/s':>16}")
    print(f"{args.services:>10} {args.steps:>7} {rate:>16,.0f}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps(
                {"services": args.services, "steps": args.steps, "service_steps_per_s": rate}
            )
            + "\n"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
