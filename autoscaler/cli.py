"""The command line: the user's door to the simulator, the controllers and the benchmarks.

Every command builds the settings once (environment variables ``AUTOSCALER_*``,
overridden by the options given here) and passes them down.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import typer

from autoscaler.settings import Settings, build_settings

if TYPE_CHECKING:
    import pandas as pd

    from bench.control import Learning, ScenarioResult
    from bench.scenarios import Scenario

DEMO_EPOCHS = 1.0
"""Quick demo training: one pass over the windows of 14 days x 3 services."""
DEMO_TRAIN_MINUTES = 2.0
DEMO_PPO_TIMESTEPS = 150_000
"""Quick demo PPO run: a few dozen updates, about a minute on 2 cores."""
DEMO_PPO_MINUTES = 1.5
DEMO_HOURS = 3.0
"""Simulated hours of the demo's inference loop."""
DEMO_CHUNK = 30
"""Cycles per inference flow run in the demo (a progress line after each)."""
DEMO_INGEST_EVERY = 5
"""The demo's loop validates and stores the cluster's metrics every 5 simulated minutes,
as the ingest schedule would; fresh minutes reach the online features in between."""

app = typer.Typer(
    help=(
        "Predictive auto-scaling for event-processing systems: simulate a cluster, run "
        "the scaling controllers (static, HPA, KEDA, predictive) against the offline "
        "oracle, and report cost and SLA."
    ),
    no_args_is_help=True,
    add_completion=False,
)


def _run_with_progress(
    scenarios: list[Scenario], workers: int, learning: Learning | None = None
) -> list[ScenarioResult]:
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from bench.control import run_benchmark

    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} scenarios"),
        TimeElapsedColumn(),
    ) as progress:
        task = progress.add_task("calibrating, scoring, solving the oracle", total=len(scenarios))

        def advance(res: ScenarioResult) -> None:
            progress.console.print(f"  done: {res.name} ({res.eval_steps} steps scored)")
            progress.advance(task)

        return run_benchmark(
            scenarios,
            workers=workers,
            progress=advance,
            keep_logs=True,
            learning=learning,
            log=progress.console.print,
        )


@app.command()
def demo(
    state_dir: Path | None = typer.Option(
        None, help="Folder for all local state; the demo works in its demo/ subfolder."
    ),
    hours: float = typer.Option(
        DEMO_HOURS, min=0.1, help="Simulated hours of the inference loop (accelerated)."
    ),
    history_days: int = typer.Option(14, min=8, help="Days of simulated history before the loop."),
    train: bool = typer.Option(
        True, help="Train and promote the forecaster and the controller (else: fallbacks)."
    ),
) -> None:
    """The main job, end to end, on embedded defaults (no server needed).

    Synthetic history for three services with different business context (a simulated
    cluster) -> ingest and validate -> features -> train and register the forecaster and
    the PPO controller (quick settings) -> promote -> the inference loop against the
    simulated cluster for HOURS simulated hours, one decision a minute -> a report
    (forecast vs actual, jobs vs demand, SLA and cost against HPA and KEDA replayed on the
    same traffic) whose path it prints.

    The demo starts afresh in <state>/demo (its cluster, stores and MLflow registry).
    """
    import shutil

    import pandas as pd

    settings = build_settings(state_dir=(state_dir or build_settings().state_dir) / "demo")
    if settings.state_dir.exists():
        typer.echo(f"Starting afresh: removing the previous demo in {settings.state_dir}")
        shutil.rmtree(settings.state_dir)
    settings.ensure_dirs()
    # One line per task run would drown the demo's own progress lines.
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    _prefect_ready(settings)
    started = time.perf_counter()
    loop_minutes = max(1, round(hours * 60))
    # The history ends the loop's length before now, so the accelerated loop ends about
    # now and every row it emits passes ingestion's "not in the future" check.
    now = pd.Timestamp.now(tz="UTC").tz_localize(None).floor("min")
    end = now - pd.Timedelta(minutes=loop_minutes)
    state = str(settings.state_dir)

    def step(text: str) -> None:
        typer.echo(f"[{time.perf_counter() - started:5.0f} s] {text}")

    from flows.features import features_flow
    from flows.ingest import ingest_flow

    step(f"Simulated cluster: 3 services, {history_days} days of history; ingesting it")
    counts = ingest_flow(
        source="cluster", days=history_days, end=end.to_pydatetime(), state_dir=state
    )
    typer.echo(
        f"  {counts['rows_in']} rows in, {counts['rows_stored']} stored, "
        f"{counts['rows_quarantined']} quarantined"
    )
    step("Features: engineering, Feast apply and materialize")
    features = features_flow(full_rebuild=True, state_dir=state)
    typer.echo(f"  {features['rows']}")
    if train:
        step("Training the event forecaster (quick settings) and registering it in MLflow")
        fc = _train_forecaster(settings, epochs=DEMO_EPOCHS, max_minutes=DEMO_TRAIN_MINUTES)
        step("Training the PPO controller (short run) and registering it in MLflow")
        ctl = _train_controller(
            settings,
            timesteps=DEMO_PPO_TIMESTEPS,
            max_minutes=DEMO_PPO_MINUTES,
            synthetic_only=True,
        )
        step("Promoting")
        _promote_for_demo(settings, "event-forecaster", fc)
        _promote_for_demo(settings, "scaling-controller", ctl)
    else:
        typer.echo("  no training: the engine serves its fallbacks (recent-window forecasts, rule)")
    step(f"Inference loop: {loop_minutes} simulated minutes, one decision per service a minute")
    _run_loop(settings, loop_minutes, lambda done: step(f"  {done}/{loop_minutes} minutes"))
    step("Report: replaying HPA and KEDA on the same traffic")
    index, table = _live_report(settings, end)
    typer.echo(table)
    step("Done")
    typer.echo(f"\nReport: {index.resolve()}")


def _promote_for_demo(settings: Settings, model: str, trained: dict[str, Any]) -> None:
    """Make the version just trained champion; where its gate refused, by hand, and say so.

    The loop must show the trained models serving. A quick demo training rarely beats the
    baselines, so a refusal is overridden here as an operator would in the MLflow UI,
    tagged ``promotion.forced`` with the gate's reason, and printed.
    """
    from autoscaler.runtime import registry_config
    from flows.promote import FORCED_OVER_TAG, FORCED_TAG
    from models import registry

    version = str(trained["version"])
    if trained["promoted"]:
        typer.echo(f"  {model} v{version}: champion (its gate promoted it)")
        return
    config = registry_config(settings, model)
    registry.set_alias(config, model, registry.CHAMPION, version)
    mlflow_client = registry.client(config)
    for key, value in {FORCED_TAG: "demo", FORCED_OVER_TAG: str(trained["reason"])}.items():
        mlflow_client.set_model_version_tag(model, version, key, value)
    typer.echo(
        f"  {model} v{version}: champion BY HAND for the demo; its gate refused it: "
        f"{trained['reason']}"
    )


def _run_loop(
    settings: Settings, minutes: int, progress: Callable[[int], None], chunk: int = DEMO_CHUNK
) -> None:
    """Run the inference flow against the simulated cluster, accelerated, in chunks."""
    from flows.inference import inference_flow

    done = 0
    while done < minutes:
        cycles = min(chunk, minutes - done)
        result = inference_flow(
            actuator="simulated",
            cycles=cycles,
            accelerated=True,
            ingest_every=DEMO_INGEST_EVERY,
            monitor_every=cycles,
            # The demo's temporary Prefect server has no deployments to trigger.
            trigger_retraining=False,
            state_dir=str(settings.state_dir),
        )
        if result["cycles"] != cycles:
            raise RuntimeError(f"the inference flow ran {result['cycles']} of {cycles} cycles")
        done += cycles
        progress(done)


def _live_report(settings: Settings, loop_start: pd.Timestamp) -> tuple[Path, str]:
    """The loop's report: truth, decisions and the HPA/KEDA replays; returns its path."""
    import pandas as pd

    from bench.live import format_live_table, live_summary, replay_baselines, write_live_report
    from features.offline import OfflineStore
    from serving.actuators.simulated import SimulatedCluster

    cluster = SimulatedCluster.load(settings.cluster_dir)
    truth = cluster.truth()
    start, stop = loop_start, cluster.clock
    replays = replay_baselines(cluster, start, stop, truth=truth)
    decisions = OfflineStore(settings.offline_dir).read("scaling_decisions", start=start)
    decisions = decisions[decisions["controller"] != "reactive"]  # the history's own scaler
    summary = live_summary(truth, replays, cluster.profiles)
    out = settings.reports_dir / f"demo-{time.strftime('%Y%m%d-%H%M%S')}"
    index = write_live_report(
        truth,
        decisions,
        replays,
        cluster.profiles,
        out,
        title=f"Inference loop: {int((stop - start) / pd.Timedelta(minutes=1))} simulated minutes",
    )
    return index, format_live_table(summary)


@app.command()
def bench(
    traces_dir: Path | None = typer.Option(None, help="Directory of timestamp,value CSVs."),
    json_path: Path | None = typer.Option(None, "--json", help="Write the records here."),
    report: bool = typer.Option(True, help="Also write the HTML/PNG report."),
    workers: int = typer.Option(2, min=1, help="Scenarios run in parallel."),
) -> None:
    """Control benchmark over every trace in TRACES_DIR plus the synthetic scenarios.

    Same as ``python -m bench.control``, with progress and a report.
    """
    from bench.control import Learning, format_table
    from bench.report import write_report
    from bench.scenarios import load_scenarios

    settings: Settings = build_settings(traces_dir=traces_dir)
    settings.ensure_dirs()
    scenarios = load_scenarios(settings.scenarios_file, settings.traces_dir)
    # As ``python -m bench.control``: the forecaster and PPO learn on the histories first.
    results = _run_with_progress(scenarios, workers, Learning())
    typer.echo(format_table(results))
    if json_path is not None:
        records = [rec for res in results for rec in res.records()]
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(records, indent=2) + "\n")
        typer.echo(f"Wrote {len(records)} records to {json_path}")
    if report:
        index = write_report(
            results, settings.bench_dir / f"report-{time.strftime('%Y%m%d-%H%M%S')}"
        )
        typer.echo(f"Report: {index.resolve()}")


def _prefect_ready(settings: Settings) -> None:
    from autoscaler.runtime import configure_prefect

    settings.ensure_dirs()
    configure_prefect(settings)


def _source_name(source: str) -> Literal["simulator", "drop"]:
    if source not in ("simulator", "drop"):
        raise typer.BadParameter("source must be 'simulator' or 'drop'", param_hint="--source")
    return "drop" if source == "drop" else "simulator"


def _run_pipeline(
    settings: Settings,
    source: str,
    days: int | None,
    full: bool,
    features: bool = True,
    corrections: bool = False,
) -> None:
    """Ingest from ``source`` and, if asked, refresh features, through the Prefect flows."""
    _prefect_ready(settings)
    from flows.features import features_flow
    from flows.ingest import ingest_flow

    state = str(settings.state_dir)
    counts = ingest_flow(
        source=_source_name(source), days=days, state_dir=state, corrections=corrections
    )
    typer.echo(
        f"ingest: {counts['rows_in']} rows in, {counts['rows_stored']} stored (new), "
        f"{counts['rows_quarantined']} quarantined in {counts['batches_quarantined']} "
        f"batch(es); quarantine: {settings.quarantine_dir}"
    )
    if features:
        result = features_flow(full_rebuild=full, state_dir=state)
        typer.echo(f"features: {result['rows']}; online store up to {result['materialized']}")


def _train_forecaster(settings: Settings, epochs: float, max_minutes: float) -> dict[str, Any]:
    """Run the train-forecaster flow and print what it registered and decided."""
    _prefect_ready(settings)
    from flows.train_forecaster import train_forecaster_flow

    result = train_forecaster_flow(
        epochs=epochs, max_minutes=max_minutes, state_dir=str(settings.state_dir)
    )
    scores = result["scores"]
    typer.echo(
        f"event-forecaster v{result['version']} "
        f"({'now champion' if result['promoted'] else 'challenger only'}): {result['reason']}"
    )
    shown = ", ".join(
        f"{name.removeprefix('gate_').removesuffix('_wql')} {value:.3f}"
        for name, value in scores.items()
    )
    typer.echo(f"  gate metric (mean wQL over services and 15/60/120 min): {shown}")
    typer.echo(f"  MLflow: {settings.mlflow_uri} (mlflow ui --backend-store-uri <that>)")
    return result


def _train_controller(
    settings: Settings,
    timesteps: int,
    max_minutes: float,
    synthetic_only: bool = False,
    mode: str = "residual",
) -> dict[str, Any]:
    """Run the train-controller flow and print what it registered and decided."""
    _prefect_ready(settings)
    from flows.train_controller import train_controller_flow

    traces = None
    if synthetic_only:
        from bench.scenarios import load_scenarios

        traces = [s.name for s in load_scenarios(settings.scenarios_file, traces_dir=None)]
    result = train_controller_flow(
        timesteps=timesteps,
        max_minutes=max_minutes,
        mode=mode,
        traces=traces,
        state_dir=str(settings.state_dir),
    )
    typer.echo(
        f"scaling-controller v{result['version']} "
        f"({'now champion' if result['promoted'] else 'challenger only'}): {result['reason']}"
    )
    typer.echo(
        f"  PPO: {result['timesteps']} steps in {result['train_seconds']:.0f} s, "
        f"forecasts from the {result['forecasts']}"
    )
    return result


@app.command("train-controller")
def train_controller(
    timesteps: int = typer.Option(4_000_000, min=1, help="PPO environment steps at most."),
    max_minutes: float = typer.Option(14.0, min=0.1, help="Wall-clock budget of the training."),
    mode: str = typer.Option("residual", help="residual (adjust the rule) or direct."),
    state_dir: Path | None = typer.Option(None, help="Folder for all local state."),
) -> None:
    """Train the PPO controller in the simulator, register it and run the promotion gate.

    Same as the train-controller Prefect flow (the Prefect UI shows every parameter).
    """
    if mode not in ("residual", "direct"):
        raise typer.BadParameter("mode must be residual or direct", param_hint="--mode")
    settings = build_settings(state_dir=state_dir)
    settings.ensure_dirs()
    _train_controller(settings, timesteps=timesteps, max_minutes=max_minutes, mode=mode)


@app.command("train-forecaster")
def train_forecaster(
    epochs: float = typer.Option(4.0, min=0.01, help="Passes over the training windows."),
    max_minutes: float = typer.Option(8.0, min=0.1, help="Wall-clock budget of the training."),
    state_dir: Path | None = typer.Option(None, help="Folder for all local state."),
) -> None:
    """Train the event forecaster on the feature store, register it and run the promotion gate.

    Same as the train-forecaster Prefect flow (the Prefect UI shows every parameter).
    """
    settings = build_settings(state_dir=state_dir)
    settings.ensure_dirs()
    _train_forecaster(settings, epochs=epochs, max_minutes=max_minutes)


@app.command()
def ingest(
    source: str = typer.Option(
        "simulator", help="simulator (simulated cluster history) or drop (drop folder)."
    ),
    days: int | None = typer.Option(None, min=8, help="Days of simulated history."),
    state_dir: Path | None = typer.Option(None, help="Folder for all local state."),
    features: bool = typer.Option(True, help="Also refresh features and the online store."),
    full: bool = typer.Option(False, help="Rebuild all features, not only new minutes."),
    corrections: bool = typer.Option(
        False,
        help="The drop files are corrections: they may replace stored minutes older than a "
        "service's newest (else refused as out_of_order).",
    ),
) -> None:
    """Run the ingest flow (validate with Great Expectations, store or quarantine), then
    the features flow (engineer, write, feast apply, materialize)."""
    _source_name(source)
    _run_pipeline(build_settings(state_dir=state_dir), source, days, full, features, corrections)


@app.command()
def serve(
    host: str = typer.Option("127.0.0.1", help="Interface to listen on."),
    port: int = typer.Option(8000, min=1, max=65535, help="Port to listen on."),
    state_dir: Path | None = typer.Option(None, help="Folder for all local state."),
) -> None:
    """Serve the HTTP API: POST /v1/decisions, GET /healthz, GET /metrics (Prometheus).

    Callers send AUTOSCALER_API_TOKEN (from the server's environment) as a bearer token.

    Decisions come from the champion models of the configured MLflow registry (the alias
    is checked every 30 s, so a promotion is served within that), or from the fallbacks
    while none is registered.
    """
    import uvicorn

    from autoscaler.runtime import registry_config
    from models.registry import AliasCache
    from serving.engine import SERVER_ALIAS_CHECK_S, DecisionEngine
    from serving.metrics import ServingMetrics
    from serving.server import build_app

    settings = build_settings(state_dir=state_dir)
    if settings.api_token is None:
        typer.echo(
            "no API token: set AUTOSCALER_API_TOKEN in the environment (callers send it as "
            "'Authorization: Bearer <token>'); without one the API would refuse everyone",
            err=True,
        )
        raise typer.Exit(code=2)
    settings.ensure_dirs()
    models = AliasCache(registry_config(settings, "serving"), max_age_s=SERVER_ALIAS_CHECK_S)
    token = settings.api_token.get_secret_value()
    api = build_app(DecisionEngine(models), ServingMetrics(), token=token)
    uvicorn.run(api, host=host, port=port, log_level=settings.log_level.lower())


@app.command("online-features")
def online_features_cmd(
    services: list[str] = typer.Argument(..., help="Service ids."),
    feature_service: str = typer.Option("controller_v1", help="Feast feature service."),
    state_dir: Path | None = typer.Option(None, help="Folder for all local state."),
) -> None:
    """Print the newest online features of services (after `autoscaler ingest`)."""
    from autoscaler.runtime import feast_config
    from features.store import online_features, open_store

    settings = build_settings(state_dir=state_dir)
    frame = online_features(open_store(feast_config(settings)), services, feature_service)
    typer.echo(frame.T.to_string())


@app.command("check-trace")
def check_trace(path: Path = typer.Argument(..., help="A timestamp,value CSV.")) -> None:
    """Validate a trace CSV and describe it (interval, span, one-minute steps)."""
    import numpy as np

    from simulator.traces import TraceError, load_trace

    try:
        trace = load_trace(path, mode="even")
    except TraceError as exc:
        typer.echo(f"invalid trace: {exc}", err=True)
        raise typer.Exit(code=2) from exc
    counts = trace.counts
    typer.echo(
        f"{path.name}: {trace.source_interval_min:g}-minute source, "
        f"{len(counts)} one-minute steps from {trace.start} ({len(counts) / 1440:.1f} days); "
        f"mean {counts.mean() / 60:.2f} events/s, "
        f"p99 {float(np.quantile(counts, 0.99)) / 60:.2f} events/s"
    )


@app.command("sim-speed")
def sim_speed(
    services: int = typer.Option(10_000, min=1, help="Services simulated at once."),
    steps: int = typer.Option(1440, min=1, help="Steps (minutes) to simulate."),
) -> None:
    """Measure simulator throughput in service-steps per second."""
    from bench.sim_speed import measure

    rate = measure(services, steps)
    typer.echo(f"{services} services x {steps} steps: {rate:,.0f} service-steps/s")


# --------------------------------------------------------------------------- promotion

_MODEL_NAMES = ("event-forecaster", "scaling-controller")
"""Registered model names (as in flows.promote, not imported: Prefect is slow to import)."""


def _model_name(model: str) -> str:
    if model not in _MODEL_NAMES:
        raise typer.BadParameter(
            f"unknown model {model!r}; choose {' or '.join(_MODEL_NAMES)}", param_hint="--model"
        )
    return model


def _describe_model(settings: Settings, name: str) -> list[str]:
    """Lines for one registered model: versions, where each alias points, the history."""
    from datetime import UTC, datetime

    from mlflow.exceptions import MlflowException

    from autoscaler.runtime import registry_config
    from models import registry

    mlflow_client = registry.client(registry_config(settings, name))
    try:
        registered = mlflow_client.get_registered_model(name)
    except MlflowException as error:
        if error.error_code == "RESOURCE_DOES_NOT_EXIST":
            return [f"{name}: no version registered"]
        raise
    aliases: dict[str, list[str]] = {}
    for alias, version in sorted(registered.aliases.items()):
        aliases.setdefault(str(version), []).append(alias)
    pointing = ", ".join(f"{a} -> v{v}" for a, v in sorted(registered.aliases.items()))
    lines = [f"{name}: {pointing or 'no alias set'}"]
    versions = sorted(
        mlflow_client.search_model_versions(f"name='{name}'"),
        key=lambda mv: int(mv.version),
        reverse=True,
    )
    lines.append(f"  {'version':<8} {'aliases':<22} {'registered (UTC)':<17} gate")
    for mv in versions:
        created = datetime.fromtimestamp(mv.creation_timestamp / 1000, tz=UTC)
        tags = mv.tags or {}
        gate = tags.get("gate.decision", "-")
        if tags.get("promotion.forced") == "true":
            gate += ", forced to champion"
        lines.append(
            f"  {'v' + str(mv.version):<8} {', '.join(aliases.get(str(mv.version), [])):<22} "
            f"{created:%Y-%m-%d %H:%M}  {gate}"
        )
    try:
        history = json.loads(registered.tags.get(registry.HISTORY_TAG) or "[]")
    except json.JSONDecodeError:
        history = ["(unreadable)"]
    if isinstance(history, list) and history:
        lines.append("  champion history: " + " -> ".join(f"v{v}" for v in history))
    return lines


@app.command("models")
def models_cmd(
    state_dir: Path | None = typer.Option(None, help="Folder for all local state."),
) -> None:
    """List the registered models, their versions and where each alias points.

    A move made by hand in the MLflow UI shows here, and inference serves it from its
    next cycle.
    """
    settings = build_settings(state_dir=state_dir)
    for name in _MODEL_NAMES:
        typer.echo("\n".join(_describe_model(settings, name)))
    typer.echo(f"MLflow: {settings.mlflow_uri}")


def _run_promote_flow(settings: Settings, **parameters: Any) -> dict[str, Any]:
    """Run the promote flow; its user errors end the command with exit code 2."""
    from flows.promote import PromotionError, promote_flow
    from models.registry import RegistryError

    try:
        result: dict[str, Any] = promote_flow(state_dir=str(settings.state_dir), **parameters)
    except (PromotionError, RegistryError) as error:
        typer.echo(f"Error: {error}", err=True)
        raise typer.Exit(code=2) from error
    return result


@app.command()
def promote(
    model: str = typer.Option(..., help="event-forecaster or scaling-controller."),
    version: str | None = typer.Option(
        None, help="Version to judge (default: the version alias challenger points to)."
    ),
    force: bool = typer.Option(
        False, "--force", help="Make it champion even if the gate refuses (recorded as forced)."
    ),
    compare_only: bool = typer.Option(
        False, "--compare-only", help="Score and record the evidence only; move no alias."
    ),
    state_dir: Path | None = typer.Option(None, help="Folder for all local state."),
) -> None:
    """Compare a version with the champion on the held-back evaluation and promote it if
    it wins (the training flows' gate).

    Same as the promote Prefect flow; the evidence goes to the version's MLflow run and a
    Prefect artifact.
    """
    name = _model_name(model)
    if force and compare_only:
        raise typer.BadParameter("--force and --compare-only exclude each other")
    settings = build_settings(state_dir=state_dir)
    _prefect_ready(settings)
    from autoscaler.runtime import registry_config
    from flows.promote import PromotionError, candidate_version

    try:
        candidate, champion = candidate_version(registry_config(settings, name), name, version)
    except PromotionError as error:
        raise typer.BadParameter(str(error), param_hint="--version") from error
    action = "compare" if compare_only else "promote"
    typer.echo(f"{name}: judging v{candidate} against champion {champion or '(none)'}")
    result = _run_promote_flow(settings, model=name, action=action, version=candidate, force=force)
    if compare_only:
        outcome = f"a promotion would {'promote' if result['would_promote'] else 'refuse'} it"
    elif result["forced"]:
        outcome = "forced to champion although the gate refused it"
    else:
        outcome = "promoted to champion" if result["promoted"] else "refused"
    typer.echo(f"{name} v{candidate}: {outcome}; champion is v{result['champion_after']}")
    typer.echo(result["summary"])


@app.command()
def rollback(
    model: str = typer.Option(..., help="event-forecaster or scaling-controller."),
    to: str | None = typer.Option(
        None, "--to", help="Version to make champion (default: the previous champion)."
    ),
    state_dir: Path | None = typer.Option(None, help="Folder for all local state."),
) -> None:
    """Move the champion alias back to the previous champion (or to --to).

    Same as the promote Prefect flow with action rollback; inference serves the new
    champion from its next cycle.
    """
    name = _model_name(model)
    settings = build_settings(state_dir=state_dir)
    _prefect_ready(settings)
    from autoscaler.runtime import registry_config
    from flows.promote import version_exists
    from models import registry

    config = registry_config(settings, name)
    current = registry.resolve_alias(config, name, registry.CHAMPION)
    if current is None:
        raise typer.BadParameter(f"{name} has no champion to roll back from", param_hint="--model")
    if to is not None and not version_exists(config, name, to):
        raise typer.BadParameter(f"version {to} of {name} does not exist", param_hint="--to")
    result = _run_promote_flow(settings, model=name, action="rollback", to_version=to)
    typer.echo(
        f"{name}: champion moved back from v{result['champion_before']} "
        f"to v{result['champion_after']}"
    )


if __name__ == "__main__":
    app()
