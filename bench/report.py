"""Control benchmark report: the table plus demand-vs-capacity plots, as HTML + PNG."""

from __future__ import annotations

import html
from pathlib import Path

import numpy as np

from bench.control import ScenarioResult, format_table

PLOT_DAYS = 2
"""Days of the evaluation range plotted (the start), so single minutes stay visible."""


def plot_scenario(result: ScenarioResult, path: Path) -> Path:
    """Demand (jobs needed at full speed) against serving jobs, one panel per controller."""
    import matplotlib

    matplotlib.use("Agg")  # no display on servers and CI
    import matplotlib.pyplot as plt

    if result.log is None:
        raise ValueError("run the scenario with keep_logs=True to plot it")
    log = result.log
    steps = min(log.n_steps, PLOT_DAYS * 1440)
    ts = log.timestamps[:steps]
    need = log.arrivals[:steps, 0] / log.params.job_step_capacity[0]
    n = len(result.runs)  # ppo runs only where a policy was trained or given
    fig, axes = plt.subplots(n, 1, figsize=(12, 2.1 * n), sharex=True)
    for lane, (ax, run) in enumerate(zip(np.atleast_1d(axes), result.runs, strict=True)):
        ax.plot(ts, need, color="0.6", lw=0.7, label="demand (jobs needed)")
        ax.step(
            ts, log.serving[:steps, lane], where="post", color="C0", lw=1.0, label="serving jobs"
        )
        ax.step(
            ts,
            log.billed[:steps, lane],
            where="post",
            color="C1",
            lw=0.6,
            alpha=0.7,
            label="billed jobs",
        )
        s = run.summary
        ax.set_title(
            f"{run.controller}: cost {s.cost:.2f}, SLA {100 * s.sla_compliance:.2f} %, "
            f"p95 {s.p95_latency_s:.0f} s",
            fontsize=9,
            loc="left",
        )
        ax.set_ylabel("jobs")
    np.atleast_1d(axes)[0].legend(loc="upper right", fontsize=8, ncol=3)
    fig.suptitle(f"{result.name}: first {PLOT_DAYS} days of the evaluation range")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def write_report(results: list[ScenarioResult], out_dir: Path) -> Path:
    """Write ``index.html`` with the table and one PNG per scenario; return its path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    parts = [
        "<!doctype html><meta charset='utf-8'><title>Control benchmark report</title>",
        "<h1>Control benchmark</h1>",
        "<p>Every controller on the evaluation range (last 30 %) of each scenario, from "
        "the same initial state; cost/oracle against the perfect-knowledge bound.</p>",
        f"<pre>{html.escape(format_table(results))}</pre>",
    ]
    for res in results:
        png = plot_scenario(res, out_dir / f"{res.name}.png")
        parts.append(f"<h2>{html.escape(res.name)}</h2><img src='{png.name}' width='100%'>")
    index = out_dir / "index.html"
    index.write_text("\n".join(parts) + "\n")
    return index
