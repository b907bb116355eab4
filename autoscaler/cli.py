"""The command line: the user's door to the simulator, the controllers and the benchmarks.

Every command builds the settings once (environment variables ``AUTOSCALER_*``,
overridden by the options given here) and passes them down.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from autoscaler.settings import Settings, build_settings

if TYPE_CHECKING:
    from bench.control import ScenarioResult
    from bench.scenarios import Scenario

app = typer.Typer(
    help=(
        "Predictive auto-scaling for event-processing systems: simulate a cluster, run "
        "the scaling controllers (static, HPA, KEDA, predictive) against the offline "
        "oracle, and report cost and SLA."
    ),
    no_args_is_help=True,
    add_completion=False,
)


def _run_with_progress(scenarios: list[Scenario], workers: int) -> list[ScenarioResult]:
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

        return run_benchmark(scenarios, workers=workers, progress=advance, keep_logs=True)


@app.command()
def demo(
    state_dir: Path | None = typer.Option(None, help="Folder for all local state."),
    workers: int = typer.Option(2, min=1, help="Scenarios run in parallel."),
) -> None:
    """Run every controller on the synthetic scenarios and write a report.

    The scenarios come from the scenarios file (synthetic ones only, so a fresh clone
    needs no trace files). Prints the benchmark table and the report's path.
    """
    from bench.control import format_table
    from bench.report import write_report
    from bench.scenarios import load_scenarios

    settings = build_settings(state_dir=state_dir)
    settings.ensure_dirs()
    scenarios = load_scenarios(settings.scenarios_file, traces_dir=None)
    typer.echo(
        f"Running {len(scenarios)} synthetic scenarios: {', '.join(s.name for s in scenarios)}"
    )
    results = _run_with_progress(scenarios, workers)
    typer.echo(format_table(results))
    out = settings.reports_dir / f"demo-{time.strftime('%Y%m%d-%H%M%S')}"
    index = write_report(results, out)
    typer.echo(f"\nReport: {index.resolve()}")


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
    from bench.control import format_table
    from bench.report import write_report
    from bench.scenarios import load_scenarios

    settings: Settings = build_settings(traces_dir=traces_dir)
    settings.ensure_dirs()
    scenarios = load_scenarios(settings.scenarios_file, settings.traces_dir)
    results = _run_with_progress(scenarios, workers)
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


if __name__ == "__main__":
    app()
