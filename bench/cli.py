"""What every trace benchmark's command line shares: ``--traces-dir DIR --json PATH``."""

from __future__ import annotations

import argparse
from pathlib import Path


def trace_bench_parser(prog: str, description: str, traces_dir: Path) -> argparse.ArgumentParser:
    """A parser with the benchmarks' contract options already added.

    Args:
        prog: Program name shown in usage (``python -m bench.<name>``).
        description: One-line description.
        traces_dir: Default traces folder (from the settings, so ``TRACES_DIR`` applies).

    Returns:
        The parser; callers add their own options.
    """
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument(
        "--traces-dir",
        type=Path,
        default=traces_dir,
        help="directory of timestamp,value CSVs (default: settings traces_dir / TRACES_DIR)",
    )
    parser.add_argument(
        "--json", type=Path, default=None, help="write the records here as a JSON list"
    )
    return parser
