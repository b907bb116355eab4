"""The `backtest` flow: the control benchmark (:mod:`bench.control`) on demand.

Each task is one call to a tested function:

1. ``load_backtest_scenarios``: the scenarios of the scenarios file, every trace in the
   traces folder plus the synthetic ones (:func:`bench.scenarios.load_scenarios`),
   narrowed by :func:`select_scenarios`.
2. ``load_registered_policy``: the registered controller behind ``model_uri``
   (:func:`models.controller.publish.load_policy`), scored as ``ppo`` without training.
   An alias that is not set yet (no controller trained) skips ``ppo`` and says so.
3. ``run_backtest``: :func:`bench.control.run_benchmark`: rules calibrated on each
   history, then every controller and the oracle scored on the evaluation range.
4. ``write_records``: the benchmark's JSON records (the keys of ``python -m
   bench.control --json``) to ``<state>/bench/backtest-<UTC time>.json``; the table goes
   to a markdown artifact.

Every parameter is typed, so the Prefect UI shows a form for manual runs.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from autoscaler.settings import Settings, build_settings

if TYPE_CHECKING:
    from bench.control import Learning, ScenarioResult
    from bench.scenarios import Scenario
    from models.controller.ppo import LearnedPolicy

IO_RETRIES: dict[str, Any] = {
    "retries": 3,
    "retry_delay_seconds": [2, 5, 15],
    "cache_policy": NO_CACHE,
}
CONTROLLER_URI = "models:/scaling-controller@champion"


def alias_of(model_uri: str) -> tuple[str, str] | None:
    """``(model name, alias)`` of a ``models:/<name>@<alias>`` URI, else None.

    Args:
        model_uri: A registry URI (``models:/<name>@<alias>`` or ``models:/<name>/<n>``).

    Returns:
        The model name and alias, or None for a URI that names no alias.
    """
    if not model_uri.startswith("models:/"):
        return None
    name, sep, alias = model_uri.removeprefix("models:/").partition("@")
    return (name, alias) if sep and name and alias else None


def select_scenarios(
    scenarios: Sequence[Scenario], include_synthetic: bool, names: Sequence[str] | None
) -> list[Scenario]:
    """The scenarios a backtest runs, in the order given.

    Args:
        scenarios: Every scenario loaded (trace scenarios first, then synthetic ones).
        include_synthetic: Keep the synthetic scenarios.
        names: Only these scenarios (None or empty: all that ``include_synthetic`` keeps).

    Returns:
        The chosen scenarios.

    Raises:
        ValueError: If a name is unknown or nothing is left to run.
    """
    kept = [s for s in scenarios if include_synthetic or s.trace_path is not None]
    if names:
        unknown = sorted(set(names) - {s.name for s in kept})
        if unknown:
            raise ValueError(
                f"unknown scenarios {unknown}; known: {[s.name for s in kept]}"
                + ("" if include_synthetic else " (synthetic ones excluded)")
            )
        kept = [s for s in kept if s.name in set(names)]
    if not kept:
        raise ValueError(
            "no scenario to run: the traces folder holds no trace and include_synthetic is false"
        )
    return kept


def backtest_path(bench_dir: Path, at: datetime) -> Path:
    """Where a backtest started at ``at`` writes its records (UTC time in the name)."""
    return bench_dir / f"backtest-{at.astimezone(UTC):%Y%m%dT%H%M%SZ}.json"


def backtest_markdown(
    results: Sequence[ScenarioResult],
    table: str,
    ppo_note: str,
    forecaster_minutes: float | None,
    records_path: Path,
    seconds: float,
) -> str:
    """The run's artifact: what was scored, the benchmark table and where the JSON is.

    Args:
        results: The benchmark results (their ``learning`` holds the ppo lane's figures).
        table: :func:`bench.control.format_table` of the results.
        ppo_note: Which controller was scored as ``ppo``, or why none was.
        forecaster_minutes: Training budget of the hybrid; None for naive forecasts only.
        records_path: The JSON records written.
        seconds: Wall time of the benchmark.
    """
    forecasts = (
        "naive providers only (no hybrid trained)"
        if forecaster_minutes is None
        else f"hybrid trained on the histories for at most {forecaster_minutes:g} min, "
        "beside the naive providers"
    )
    lines = [
        "# Backtest",
        "",
        f"- {len(results)} scenarios in {seconds:.0f} s: {', '.join(r.name for r in results)}",
        f"- ppo: {ppo_note}",
        f"- forecasts: {forecasts}",
        f"- records: `{records_path}`",
    ]
    for res in results:
        if res.learning:
            lines.append(
                f"- ppo on {res.name}: decision p50 {res.learning['decision_ms_p50']} ms, "
                f"p99 {res.learning['decision_ms_p99']} ms, shield interventions "
                f"{res.learning['shield_interventions']}"
            )
    return "\n".join([*lines, "", "```text", table, "```"])


@task(**IO_RETRIES)
def load_backtest_scenarios(settings: Settings) -> list[Scenario]:
    """The scenarios file's scenarios: every trace in the traces folder, then synthetic ones."""
    from bench.scenarios import load_scenarios

    if not settings.traces_dir.is_dir():
        get_run_logger().warning(
            "no traces folder at %s: synthetic scenarios only", settings.traces_dir
        )
        return load_scenarios(settings.scenarios_file, None)
    return load_scenarios(settings.scenarios_file, settings.traces_dir)


@task(**IO_RETRIES)
def load_registered_policy(
    settings: Settings, model_uri: str | None
) -> tuple[LearnedPolicy | None, str]:
    """The registered controller to score as ``ppo`` and a note saying which (or why none).

    An alias is resolved first, so the note names the version that was scored.
    """
    if not model_uri:
        return None, "not scored (no model_uri given)"
    from autoscaler.runtime import registry_config
    from models import registry
    from models.controller import publish

    config = registry_config(settings, publish.MODEL_NAME)
    uri, label = model_uri, f"`{model_uri}`"
    named = alias_of(model_uri)
    if named is not None:
        name, alias = named
        version = registry.resolve_alias(config, name, alias)
        if version is None:
            return None, (
                f"not scored: alias `{alias}` of `{name}` is not set yet (the "
                "train-controller flow registers a controller; promote one to set it)"
            )
        uri, label = registry.version_uri(name, version), f"`{model_uri}` (version {version})"
    policy, _ = publish.load_policy(config, uri)
    return policy, label


@task(cache_policy=NO_CACHE)
def run_backtest(
    scenarios: list[Scenario], workers: int, learning: Learning
) -> tuple[list[ScenarioResult], float]:
    """Calibrate, score every controller and the oracle; returns results and wall time."""
    from bench.control import run_benchmark

    logger = get_run_logger()

    def scored(res: ScenarioResult) -> None:
        logger.info("%s: %d steps scored", res.name, res.eval_steps)

    tick = time.perf_counter()
    results = run_benchmark(
        scenarios, workers=workers, progress=scored, learning=learning, log=logger.info
    )
    return results, time.perf_counter() - tick


@task(**IO_RETRIES)
def write_records(path: Path, results: list[ScenarioResult]) -> list[dict[str, Any]]:
    """Write the benchmark's JSON records; returns them."""
    records = [rec for res in results for rec in res.records()]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(records, indent=2) + "\n")
    return records


@flow(name="backtest", log_prints=True)
def backtest_flow(
    traces_dir: str | None = None,
    include_synthetic: bool = True,
    scenarios: list[str] | None = None,
    model_uri: str | None = CONTROLLER_URI,
    forecaster_minutes: float | None = None,
    workers: int = 2,
    scenarios_file: str | None = None,
    state_dir: str | None = None,
) -> dict[str, Any]:
    """Run the control benchmark: rules, the registered controller and the oracle.

    Args:
        traces_dir: Folder of ``timestamp,value`` trace CSVs (default from settings /
            AUTOSCALER_TRACES_DIR); without one, the synthetic scenarios only.
        include_synthetic: Also run the synthetic scenarios of the scenarios file.
        scenarios: Run only these scenario names (default: all).
        model_uri: Registered controller scored as ``ppo`` (no training); empty for the
            rules only. An alias that is not set yet skips ``ppo``.
        forecaster_minutes: Train the hybrid forecaster on the histories for at most this
            long first, so the predictive rule and ``ppo`` may use it; empty for the
            naive forecast providers only (fast).
        workers: Scenarios calibrated and scored in parallel.
        scenarios_file: Scenarios YAML (default from settings: bench/scenarios.yaml).
        state_dir: State folder (default from settings / AUTOSCALER_STATE_DIR).

    Returns:
        Where the records are, the scenarios, what was scored as ``ppo``, the records.
    """
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if forecaster_minutes is not None and forecaster_minutes <= 0:
        raise ValueError("forecaster_minutes must be > 0, or empty for no hybrid")
    from bench.control import Learning, format_table

    started = datetime.now(UTC)
    settings = build_settings(
        state_dir=Path(state_dir) if state_dir else None,
        traces_dir=Path(traces_dir) if traces_dir else None,
        scenarios_file=Path(scenarios_file) if scenarios_file else None,
    )
    if traces_dir and not settings.traces_dir.is_dir():
        raise ValueError(f"traces_dir {traces_dir!r} is not a folder")
    logger = get_run_logger()
    chosen = select_scenarios(load_backtest_scenarios(settings), include_synthetic, scenarios)
    policy, ppo_note = load_registered_policy(settings, model_uri)
    logger.info("ppo: %s", ppo_note)
    learning = Learning(
        forecaster_minutes=forecaster_minutes,
        ppo=None,
        policy=policy,
        policy_label=model_uri or "",
    )
    results, seconds = run_backtest(chosen, workers, learning)
    path = backtest_path(settings.bench_dir, started)
    records = write_records(path, results)
    table = format_table(results)
    create_markdown_artifact(
        markdown=backtest_markdown(results, table, ppo_note, forecaster_minutes, path, seconds),
        key="backtest",
        description="Control benchmark: every controller against the oracle",
    )
    logger.info("wrote %d records to %s", len(records), path)
    return {
        "records_path": str(path),
        "scenarios": [r.name for r in results],
        "ppo": ppo_note if policy is not None else None,
        "ppo_note": ppo_note,
        "records": records,
    }
