"""Decision latency: one decision, a 1,000-service cycle, and Prefect's overhead per run.

    python -m bench.latency --json PATH [--services 1000] [--decisions 300] [--cycles 5]

Backends: those the settings name, built from the environment as every entry point builds
them; by default the embedded ones (Feast SQLite online store in a temporary state folder,
MLflow on SQLite). On Redis, with the other settings left as they are::

    redis-server --port 6391 --save '' --appendonly no --daemonize yes
    AUTOSCALER_ONLINE_STORE=redis AUTOSCALER_REDIS_URL=localhost:6391 \
        python -m bench.latency --json PATH

(``AUTOSCALER_MLFLOW_TRACKING_URI`` moves the registry likewise.) The backends used are in
the record (``online_store``, ``mlflow_backend``: the tracking URI's scheme) and the table.
The services are ``lat-<run>-00000`` on, an id prefix of their own per run, so a run on a
Redis that earlier runs wrote to reads none of their rows (a decision already stored for a
minute would make the cycle skip it); use a Redis, or a ``,db=N``, kept for benchmarks and
flush it afterwards.

Set-up (not timed):

* the feature repo is applied and one minute of features for ``--services`` services is
  written to the online store (values drawn at random in the engineered features' schema,
  with plausible profiles: a service of 1..40 jobs at 25 events/s per job);
* a forecaster (the default hybrid network, untrained: the same arithmetic as a trained
  one) and a controller (the default PPO actor, random weights) are registered in MLflow
  and made ``champion``; the engine loads them by alias, as in serving.

Timed (JSON keys):

* ``p99_decision_ms``: one decision for one service, from "read online features" to
  "target returned" (online read, forecast, policy, shield), p99 over ``--decisions``
  decisions (p50 as ``p50_decision_ms``). The models are followed by alias as the HTTP
  API follows them (the registry asked every ``SERVER_ALIAS_CHECK_S``); one check of
  both aliases is timed on its own as ``alias_check_ms``;
* ``cycle_1000_services_s``: one engine cycle for all services (one online read, the
  alias check, one batched forecast and policy call, the dry-run actuator), the median
  over ``--cycles`` cycles, no Prefect; with the decision log (the offline journal
  written before actuation, the online push after it) as ``cycle_with_log_s``, its
  stages in ``cycle_with_log_stages_s``;
* ``prefect_cycle_overhead_s``: the wall time of one ``inference`` flow run (dry-run
  actuator, the same services, one cycle) minus the engine cycle it runs, on Prefect's
  temporary server that is already up. It includes what a scheduled run pays every
  time: opening the feature store and loading the models from the registry (a scheduled
  run is a new process), plus the flow and task bookkeeping; the breakdown is in
  ``prefect_breakdown``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import os
import secrets
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import pandas as pd

SERVICES = 1000


def plausible_frames(services: int, at: pd.Timestamp, seed: int = 0, prefix: str = "svc") -> Any:
    """Random feature rows in the real schema, with profiles and state a cluster could have.

    Services are ``<prefix>-00000`` on (:func:`bench.online_read.synthetic_frames`).
    """
    from bench.online_read import synthetic_frames

    rng = np.random.default_rng(seed)
    frames = synthetic_frames(services, at, seed, prefix)
    level = rng.uniform(300, 30_000, services)  # events per minute
    minute = frames.minute
    minute["events_in"] = rng.poisson(level).astype(np.float32)
    minute["jobs_running"] = np.maximum(1, np.ceil(level / (25 * 60 * 0.7))).astype(np.int64)
    minute["jobs_starting"] = 0
    minute["queue_length"] = 0.0
    minute["events_dropped"] = 0.0
    minute["utilization"] = rng.uniform(0.3, 0.9, services).astype(np.float32)
    minute["minute_of_day"] = at.hour * 60 + at.minute
    minute["day_of_week"] = at.dayofweek
    minute["criticality"] = rng.integers(1, 4, services)
    minute["sla_latency_s"] = 60.0
    minute["sla_target"] = 0.99
    recent = [rng.poisson(v, 120).astype(np.float32) for v in level]
    hourly = [(rng.poisson(v, 168) * 60).astype(np.float32) for v in level]
    frames.sequences["recent_events_120m"] = pd.Series(recent, index=frames.sequences.index)
    frames.sequences["hourly_events_7d"] = pd.Series(hourly, index=frames.sequences.index)
    profiles = frames.profiles
    profiles["criticality"] = minute["criticality"].to_numpy()
    profiles["sla_latency_s"] = 60.0
    profiles["sla_target"] = 0.99
    profiles["cost_per_job_hour"] = 0.2
    profiles["daily_budget"] = 10_000.0
    profiles["min_jobs"] = 1
    profiles["max_jobs"] = 40
    profiles["max_step"] = 4
    profiles["job_capacity_eps"] = 25.0
    profiles["job_startup_s"] = 90.0
    return frames


def register_untrained_forecaster(settings: Any, network: Any, members: int = 1) -> str:
    """Register an untrained hybrid of shape ``network`` as ``event-forecaster`` (champion).

    Untrained weights cost the same arithmetic as trained ones: what latency and flow tests
    need, without a training run.
    """
    import torch

    from autoscaler.runtime import registry_config
    from models import registry
    from models.forecaster import package
    from models.forecaster.model import HybridForecaster
    from models.forecaster.publish import LOADER, MODEL_NAME, REQUIREMENTS
    from models.forecaster.train import Forecaster
    from models.requirements import pinned_requirements

    torch.manual_seed(0)
    forecaster = Forecaster([HybridForecaster(network) for _ in range(members)], None)
    example = package.example_frame(horizons=forecaster.horizons)
    signature = registry.infer_signature(
        example, package.predict_frame(forecaster, example), optional=package.OPTIONAL_COLUMNS
    )
    config = registry_config(settings, MODEL_NAME)
    with tempfile.TemporaryDirectory() as tmp:
        folder = package.save(forecaster, Path(tmp) / "forecaster")
        version = registry.log_and_register(
            config,
            model_name=MODEL_NAME,
            python_model=registry.FolderModel(LOADER),
            artifacts={registry.FOLDER_ARTIFACT: str(folder)},
            signature=signature,
            input_example=example,
            params={},
            metrics={},
            figures={},
            tags={"untrained": "true"},
            pip_requirements=pinned_requirements(REQUIREMENTS),
        ).version
    registry.set_alias(config, MODEL_NAME, registry.CHAMPION, version)
    return version


def register_models(settings: Any) -> dict[str, str]:
    """An untrained default forecaster and a random default PPO actor, both champion."""
    from autoscaler.runtime import registry_config
    from bench.control import HORIZONS, QUANTILES
    from models import registry
    from models.controller import publish
    from models.controller.env import Randomization, RewardWeights, RuleSettings
    from models.controller.policy_inputs import N_FEATURES
    from models.controller.ppo import POLICY_SHIELD, LearnedPolicy, PPOConfig, PPOReport
    from models.forecaster.train import TrainConfig

    train = TrainConfig()
    fc = register_untrained_forecaster(settings, train.network, train.members)

    ppo = PPOConfig()
    rng = np.random.default_rng(0)
    sizes = [N_FEATURES, *ppo.net_arch, 2 * ppo.action_limit + 1]
    layers = [
        (rng.normal(0, 0.1, (b, a)).astype(np.float32), np.zeros(b, np.float32))
        for a, b in itertools.pairwise(sizes)
    ]
    policy = LearnedPolicy(layers, "residual", ppo.action_limit, RuleSettings(), POLICY_SHIELD)
    ctl_cfg = registry_config(settings, publish.MODEL_NAME)
    ctl = publish.register(
        ctl_cfg,
        policy,
        horizons=HORIZONS,
        quantiles=QUANTILES,
        ppo=ppo,
        report=PPOReport(timesteps=0, seconds=0.0, stopped_by="latency benchmark"),
        weights=RewardWeights(),
        randomization=Randomization(),
    ).version
    registry.set_alias(ctl_cfg, publish.MODEL_NAME, "champion", ctl)
    return {"event-forecaster": fc, "scaling-controller": ctl}


def _quiet_dry_run() -> Any:
    from serving.actuators.dry_run import DryRunActuator

    # One log line per decision would time the logging, not the engine.
    quiet = logging.getLogger("bench.latency.dry-run")
    quiet.setLevel(logging.WARNING)
    return DryRunActuator(logger=quiet)


def backends(settings: Any) -> dict[str, str]:
    """The online store and MLflow backend the settings name (no address, no credentials).

    Args:
        settings: :class:`autoscaler.settings.Settings`.

    Returns:
        ``online_store`` (``sqlite`` or ``redis``) and ``mlflow_backend`` (the tracking
        URI's scheme: ``sqlite``, ``postgresql``, ``http`` for a tracking server, ``file``).
    """
    return {
        "online_store": str(settings.online_store),
        "mlflow_backend": urlsplit(settings.mlflow_uri).scheme or "file",
    }


def measure(state_dir: Path, services: int, decisions: int, cycles: int) -> dict[str, Any]:
    """Run the set-up and every timing (module docstring); returns the JSON record."""
    from autoscaler.runtime import configure_prefect, feast_config, registry_config
    from autoscaler.settings import build_settings
    from features.offline import OfflineStore
    from features.store import OnlineReader, apply, write_online
    from models.registry import AliasCache, resolve_alias
    from serving.cycle import FEATURE_SERVICE, DecisionLog, run_cycle
    from serving.engine import SERVER_ALIAS_CHECK_S, DecisionEngine
    from serving.inputs import from_online

    settings = build_settings(state_dir=state_dir)
    settings.ensure_dirs()
    configure_prefect(settings)
    now = pd.Timestamp.now(tz="UTC").tz_localize(None).floor("min")
    store = apply(feast_config(settings))
    prefix = f"lat-{secrets.token_hex(3)}"  # this run's services (module docstring)
    frames = plausible_frames(services, now, prefix=prefix)
    write_online(store, frames)
    ids = frames.minute["service_id"].tolist()
    versions = register_models(settings)
    reader = OnlineReader(store, FEATURE_SERVICE)
    config = registry_config(settings, "inference")
    # Single decisions as the HTTP API serves them: the alias is checked every
    # SERVER_ALIAS_CHECK_S, not per call; what a check costs is timed on its own below.
    engine = DecisionEngine(AliasCache(config, max_age_s=SERVER_ALIAS_CHECK_S))
    cycle_engine = DecisionEngine(AliasCache(config))  # a cycle checks every time
    age = pd.Timedelta(minutes=10)

    # One decision for one service, end to end (the first loads the models: not timed).
    engine.decide(from_online(reader.read(ids[:1], with_timestamps=True), age, now))
    one = []
    for k in range(decisions):
        sid = ids[k % len(ids)]
        t0 = time.perf_counter()
        out = engine.decide(from_online(reader.read([sid], with_timestamps=True), age, now))
        one.append(time.perf_counter() - t0)
        assert len(out) == 1 and engine.used.problems == {}, engine.used.problems
    one_ms = np.array(one) * 1000
    checks = []
    for _ in range(20):
        t0 = time.perf_counter()
        for name in versions:
            resolve_alias(config, name, "champion")
        checks.append(time.perf_counter() - t0)

    # A cycle for every service: no log, then with the decision log.
    actuator = _quiet_dry_run()
    runs = [
        run_cycle(cycle_engine, reader, actuator, None, ids, now, max_feature_age=age)
        for _ in range(cycles)
    ]
    assert all(len(r.decisions) == services for r in runs)
    log = DecisionLog(OfflineStore(settings.offline_dir), store)
    logged = []
    for k in range(cycles):
        # Each logged cycle decides a new minute, as the schedule does.
        minute = now + pd.Timedelta(minutes=k + 1)
        write_online(store, plausible_frames(services, minute, seed=k + 1, prefix=prefix))
        logged.append(run_cycle(engine, reader, actuator, log, ids, minute, max_feature_age=age))
    assert all(len(r.decisions) == services for r in logged)
    cycle_s = statistics.median(r.seconds["total"] for r in runs)
    stages = {
        stage: round(statistics.median(r.seconds[stage] for r in runs), 4)
        for stage in ("read", "decide", "act")
    }
    log_stages = {
        stage: round(statistics.median(r.seconds[stage] for r in logged), 4)
        for stage in ("read", "decide", "act", "log")
    }

    # Prefect: the inference flow for the same services on the temporary server.
    from prefect import flow

    from flows.inference import inference_flow

    @flow(name="latency-warm-up")
    def warm_up() -> None:
        """Start the temporary server outside the timing."""

    warm_up()
    overheads, walls, inside = [], [], []
    for k in range(3):
        # A new minute per run: a minute already decided is skipped, not decided again.
        minute = now + pd.Timedelta(minutes=cycles + 1 + k)
        write_online(store, plausible_frames(services, minute, seed=100 + k, prefix=prefix))
        t0 = time.perf_counter()
        result = inference_flow(
            actuator="dry-run",
            services=ids,
            cycles=1,
            monitor_every=0,
            max_feature_age_minutes=60,
            state_dir=str(state_dir),
        )
        wall = time.perf_counter() - t0
        assert result["cycles"] == 1 and result["decisions"] == services, result
        engine_s = float(result["last"]["seconds"]["total"])
        walls.append(wall)
        inside.append(engine_s)
        overheads.append(wall - engine_s)
    return {
        "services": services,
        **backends(settings),
        "decisions_timed": decisions,
        "cycles_timed": cycles,
        "models": versions,
        "p50_decision_ms": round(float(np.percentile(one_ms, 50)), 3),
        "p99_decision_ms": round(float(np.percentile(one_ms, 99)), 3),
        "cycle_1000_services_s": round(cycle_s, 4),
        "cycle_stages_s": stages,
        "cycle_with_log_s": round(statistics.median(r.seconds["total"] for r in logged), 4),
        "cycle_with_log_stages_s": log_stages,
        "alias_check_ms": round(1000 * statistics.median(checks), 3),
        "prefect_cycle_overhead_s": round(statistics.median(overheads), 4),
        "prefect_breakdown": {
            "flow_run_s": round(statistics.median(walls), 4),
            "engine_cycle_in_flow_s": round(statistics.median(inside), 4),
            "runs": 3,
            "note": (
                "overhead = one inference flow run minus the engine cycle inside it (read, "
                "decide, act and the decision log), median of 3 runs: opening the feature "
                "store, loading both models from the registry, the online refresh check, "
                "and Prefect's flow and task bookkeeping"
            ),
        },
        "cpu_count": os.cpu_count(),
    }


def format_table(record: dict[str, Any]) -> str:
    """The record as a small text table."""
    rows = [
        ("online store / MLflow backend", f"{record['online_store']} / {record['mlflow_backend']}"),
        ("one decision p50 (ms)", record["p50_decision_ms"]),
        ("one decision p99 (ms)", record["p99_decision_ms"]),
        ("registry alias check, both models (ms)", record["alias_check_ms"]),
        (f"cycle, {record['services']} services (s)", record["cycle_1000_services_s"]),
        (
            "  of which read / decide / act (s)",
            " / ".join(map(str, record["cycle_stages_s"].values())),
        ),
        ("cycle with decision log (s)", record["cycle_with_log_s"]),
        (
            "  of which read / decide / act / log (s)",
            " / ".join(map(str, record["cycle_with_log_stages_s"].values())),
        ),
        ("Prefect overhead per run (s)", record["prefect_cycle_overhead_s"]),
        (
            "  flow run / engine cycle in it (s)",
            f"{record['prefect_breakdown']['flow_run_s']} / "
            f"{record['prefect_breakdown']['engine_cycle_in_flow_s']}",
        ),
    ]
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", type=Path, default=None, help="Write the record here.")
    parser.add_argument("--services", type=int, default=SERVICES, help="Services per cycle.")
    parser.add_argument("--decisions", type=int, default=300, help="Single decisions timed.")
    parser.add_argument("--cycles", type=int, default=5, help="Cycles timed.")
    parser.add_argument(
        "--state-dir", type=Path, default=None, help="State folder (default: a temporary one)."
    )
    args = parser.parse_args(argv)
    if args.services < 1 or args.decisions < 1 or args.cycles < 1:
        parser.error("--services, --decisions and --cycles must be >= 1")
    with tempfile.TemporaryDirectory(prefix="latency-") as tmp:
        state = args.state_dir or Path(tmp)
        record = measure(state, args.services, args.decisions, args.cycles)
    print(format_table(record))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(record, indent=2) + "\n")
        print(f"Wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
