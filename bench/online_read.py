"""Online feature read latency: Feast's online store, one service and many services at once.

    python -m bench.online_read [--services 1000] [--repeat 200] [--json PATH]

Set-up (not timed): the repo in ``feature_repo/`` is applied to a temporary Feast folder
(SQLite online store, as in the embedded defaults); one minute of feature rows for
``--services`` services (values drawn at random in the engineered features' schema, arrays
included) plus their profiles is written and materialized.

Timed: ``features.store.OnlineReader.read`` with the ``controller_v1`` and ``forecaster_v1``
feature services (the reads the inference flow makes), for one service (``--repeat``
reads, p50 and p99) and for all services in one call (``--repeat // 10`` reads, at least 5).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from features.engineering import (
    MINUTE_FEATURES,
    PANDAS_DTYPES,
    PROFILE_FEATURES,
    SEQUENCE_FEATURES,
    FeatureFrames,
)
from features.store import FeastConfig, OnlineReader, apply, materialize, write_features


def _column(kind: str, n: int, rng: np.random.Generator) -> Any:
    if kind == "bool":
        return rng.random(n) < 0.1
    if kind == "int64":
        return rng.integers(0, 50, n)
    return rng.random(n).astype(np.float32) * 100


def synthetic_frames(
    services: int, at: pd.Timestamp, seed: int = 0, prefix: str = "svc"
) -> FeatureFrames:
    """One feature row per service at ``at`` with random values in the real schema.

    Args:
        services: Rows (services ``<prefix>-00000`` on).
        at: Their event timestamp.
        seed: Seed of the values.
        prefix: Service id prefix (a run that shares an online store with earlier runs
            takes its own).
    """
    rng = np.random.default_rng(seed)
    ids = [f"{prefix}-{i:05d}" for i in range(services)]
    keys = {"service_id": ids, "event_timestamp": [at] * services}
    minute = pd.DataFrame(keys | {n: _column(k, services, rng) for n, k in MINUTE_FEATURES})
    minute = minute.astype({n: PANDAS_DTYPES[k] for n, k in MINUTE_FEATURES})
    sequences = pd.DataFrame(
        keys
        | {
            n: [rng.random(length).astype(np.float32) for _ in range(services)]
            for n, length in SEQUENCE_FEATURES
        }
    )
    profiles = pd.DataFrame(keys | {n: _column(k, services, rng) for n, k in PROFILE_FEATURES})
    profiles = profiles.astype({n: PANDAS_DTYPES[k] for n, k in PROFILE_FEATURES})
    return FeatureFrames(minute=minute, sequences=sequences, profiles=profiles)


def _time_reads(reader: OnlineReader, ids: list[str], repeat: int) -> np.ndarray:
    seconds = np.empty(repeat)
    for i in range(repeat):
        start = time.perf_counter()
        frame = reader.read(ids)
        seconds[i] = time.perf_counter() - start
        if len(frame) != len(ids):
            raise RuntimeError("online read returned the wrong number of rows")
    return seconds * 1000.0


def measure(repo_dir: Path, services: int, repeat: int) -> list[dict[str, Any]]:
    """Apply, materialize and time the reads; one record per (feature service, batch size)."""
    at = pd.Timestamp.now(tz="UTC").tz_localize(None).floor("min")
    with tempfile.TemporaryDirectory(prefix="bench-online-") as tmp:
        cfg = FeastConfig(repo_dir=repo_dir, feast_dir=Path(tmp))
        store = apply(cfg)
        write_features(cfg, synthetic_frames(services, at))
        materialize(store, at - pd.Timedelta(minutes=1), at)
        ids = [f"svc-{i:05d}" for i in range(services)]
        records = []
        for feature_service in ("controller_v1", "forecaster_v1"):
            # Resolved once, as the every-minute inference cycle does; the first read warms
            # the connection.
            reader = OnlineReader(store, feature_service)
            reader.read(ids[:1])
            one = _time_reads(reader, ids[:1], repeat)
            many = _time_reads(reader, ids, max(5, repeat // 10))
            for size, ms in ((1, one), (services, many)):
                records.append(
                    {
                        "feature_service": feature_service,
                        "services": size,
                        "reads": len(ms),
                        "p50_ms": round(float(np.percentile(ms, 50)), 3),
                        "p99_ms": round(float(np.percentile(ms, 99)), 3),
                    }
                )
    return records


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.online_read", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--repo", type=Path, default=Path("feature_repo"))
    parser.add_argument("--services", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=200, help="single-service reads")
    parser.add_argument("--json", type=Path, default=None, help="write the records here")
    args = parser.parse_args(argv)
    if args.services < 1 or args.repeat < 1:
        parser.error("--services and --repeat must be >= 1")
    records = measure(args.repo, args.services, args.repeat)
    print(f"{'feature service':<16} {'services':>8} {'reads':>6} {'p50 ms':>9} {'p99 ms':>9}")
    for r in records:
        print(
            f"{r['feature_service']:<16} {r['services']:>8} {r['reads']:>6} "
            f"{r['p50_ms']:>9.2f} {r['p99_ms']:>9.2f}"
        )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(records, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
