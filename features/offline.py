"""The offline store: validated rows of every contract table as partitioned Parquet.

Layout under ``root``::

    <table>/service=<quoted service_id>/date=<YYYY-MM-DD>/part.parquet   per-minute tables
    <table>/service=<quoted service_id>/part.parquet                     service_profiles
    _batches/<batch_id>.json                                             ingested batches

One file per (table, service, day) keeps a rewrite small (1,440 rows) when rows of that day
arrive again, and lets a reader touch only the services and days it needs. Appending is
idempotent on (service_id, ts): a row already stored with the same values is left alone, a
row with the same key and new values replaces the old one (a corrected export), so loading
a batch twice leaves one copy. Files are written to a temporary name and renamed, so a
reader never sees half a file.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

import numpy as np
import pandas as pd

from features.contracts import KEYS, contract, empty

_BATCHES = "_batches"


@dataclass(frozen=True)
class AppendResult:
    """What one append did.

    Attributes:
        new: Rows whose key was not stored before.
        replaced: Stored rows overwritten by a row with the same key and other values.
        unchanged: Rows identical to what was stored (a re-sent batch).
    """

    new: int = 0
    replaced: int = 0
    unchanged: int = 0

    def __add__(self, other: AppendResult) -> AppendResult:
        return AppendResult(
            self.new + other.new,
            self.replaced + other.replaced,
            self.unchanged + other.unchanged,
        )


def _write_atomic(frame: pd.DataFrame, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".part-", suffix=".tmp")
    os.close(fd)
    try:
        frame.to_parquet(tmp, index=False)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _same_rows(old: pd.DataFrame, new: pd.DataFrame) -> np.ndarray:
    """Row-wise equality of two aligned frames, NaN equal to NaN."""
    equal = np.ones(len(old), dtype=bool)
    for name in old.columns:
        a, b = old[name], new[name]
        both_missing = a.isna().to_numpy() & b.isna().to_numpy()
        same = (a == b).fillna(False).to_numpy(dtype=bool)
        equal &= same | both_missing
    return equal


class OfflineStore:
    """Partitioned Parquet store of the contract tables.

    Args:
        root: Folder of the store (created on first write).
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    # -- layout ---------------------------------------------------------------------------

    def _service_dir(self, table: str, service_id: str) -> Path:
        # Quoted so any service name (slashes, dots, spaces) is one safe folder name.
        return self.root / table / f"service={quote(service_id, safe='')}"

    def _partition(self, table: str, service_id: str, day: pd.Timestamp | None) -> Path:
        base = self._service_dir(table, service_id)
        if day is None:
            return base / "part.parquet"
        return base / f"date={day:%Y-%m-%d}" / "part.parquet"

    def services(self, table: str) -> list[str]:
        """Service ids with rows stored in ``table``, sorted."""
        folder = self.root / contract(table).name
        if not folder.exists():
            return []
        return sorted(
            unquote(p.name.removeprefix("service="))
            for p in folder.iterdir()
            if p.is_dir() and p.name.startswith("service=")
        )

    def _files(
        self,
        table: str,
        service_id: str,
        start: pd.Timestamp | None,
        end: pd.Timestamp | None,
    ) -> list[Path]:
        base = self._service_dir(table, service_id)
        if not contract(table).per_minute:
            path = base / "part.parquet"
            return [path] if path.exists() else []
        if not base.exists():
            return []
        files = []
        for day_dir in sorted(base.glob("date=*")):
            day = pd.Timestamp(day_dir.name.removeprefix("date="))
            if start is not None and day + pd.Timedelta(days=1) <= start.normalize():
                continue
            if end is not None and day > end:
                continue
            path = day_dir / "part.parquet"
            if path.exists():
                files.append(path)
        return files

    # -- writing --------------------------------------------------------------------------

    def append(self, table: str, frame: pd.DataFrame) -> AppendResult:
        """Store validated rows of ``table``; idempotent on (service_id, ts).

        Args:
            table: Contract table name.
            frame: Rows already conformed to the contract and validated.

        Returns:
            Counts of new, replaced and unchanged rows.

        Raises:
            ValueError: If the frame does not have the contract's columns, has null keys
                or repeats a key (validation lets none of these through).
        """
        spec = contract(table)
        if list(frame.columns) != spec.names:
            raise ValueError(
                f"{table}: append needs exactly the contract columns {spec.names}, "
                f"got {list(frame.columns)}"
            )
        if frame[list(KEYS)].isna().any().any():
            raise ValueError(f"{table}: rows with a null service_id or ts cannot be stored")
        if frame.duplicated(list(KEYS)).any():
            raise ValueError(f"{table}: the rows repeat a (service_id, ts) key")
        frame = frame.astype(spec.dtypes())
        total = AppendResult()
        if spec.per_minute:
            groups = frame.groupby([frame["service_id"], frame["ts"].dt.normalize()], sort=True)
            for (sid, day), rows in groups:
                day_ts = pd.Timestamp(day)  # type: ignore[arg-type]
                total += self._merge(table, self._partition(table, str(sid), day_ts), rows)
        else:
            for sid, rows in frame.groupby("service_id", sort=True):
                total += self._merge(table, self._partition(table, str(sid), None), rows)
        return total

    def _merge(self, table: str, path: Path, rows: pd.DataFrame) -> AppendResult:
        spec = contract(table)
        rows = rows.reset_index(drop=True)
        if not path.exists():
            _write_atomic(rows.sort_values("ts", ignore_index=True), path)
            return AppendResult(new=len(rows))
        stored = pd.read_parquet(path).astype(spec.dtypes())
        old = stored.set_index("ts")
        seen = rows["ts"].isin(old.index).to_numpy()
        unchanged = 0
        if seen.any():
            again = rows[seen]
            before = old.loc[again["ts"]].reset_index()[spec.names]
            unchanged = int(_same_rows(before, again.reset_index(drop=True)).sum())
        replaced = int(seen.sum()) - unchanged
        if seen.all() and replaced == 0:
            return AppendResult(unchanged=unchanged)
        merged = pd.concat([stored[~stored["ts"].isin(rows["ts"])], rows], ignore_index=True)
        _write_atomic(merged.sort_values("ts", ignore_index=True), path)
        return AppendResult(new=int((~seen).sum()), replaced=replaced, unchanged=unchanged)

    # -- reading --------------------------------------------------------------------------

    def read(
        self,
        table: str,
        services: Sequence[str] | None = None,
        start: pd.Timestamp | None = None,
        end: pd.Timestamp | None = None,
    ) -> pd.DataFrame:
        """Rows of ``table`` in the contract dtypes, sorted by service and time.

        Args:
            table: Contract table name.
            services: Only these services (default all stored).
            start: Only rows with ts >= start.
            end: Only rows with ts <= end.

        Returns:
            The rows; an empty frame in the contract when there are none.
        """
        spec = contract(table)
        wanted = self.services(table) if services is None else list(services)
        frames = [
            pd.read_parquet(path) for sid in wanted for path in self._files(table, sid, start, end)
        ]
        if not frames:
            return empty(table)
        out = pd.concat(frames, ignore_index=True).astype(spec.dtypes())
        if start is not None:
            out = out[out["ts"] >= start]
        if end is not None:
            out = out[out["ts"] <= end]
        return out.sort_values(list(KEYS), ignore_index=True)

    def last_rows(self, table: str, services: Iterable[str]) -> pd.DataFrame:
        """The newest stored row of each given service (those with any rows)."""
        spec = contract(table)
        frames = []
        for sid in services:
            files = self._files(table, sid, None, None)
            if files:
                newest = pd.read_parquet(files[-1])
                frames.append(newest.sort_values("ts").tail(1))
        if not frames:
            return empty(table)
        return pd.concat(frames, ignore_index=True).astype(spec.dtypes())

    def newest_ts(self, table: str) -> pd.Timestamp | None:
        """Newest ts stored in ``table`` over all services, or None when empty."""
        last = self.last_rows(table, self.services(table))
        return None if last.empty else pd.Timestamp(last["ts"].max())

    # -- batch ledger ---------------------------------------------------------------------

    def _ledger_path(self, batch_id: str) -> Path:
        return self.root / _BATCHES / f"{quote(batch_id, safe='')}.json"

    def batch_record(self, batch_id: str) -> dict[str, Any] | None:
        """What was recorded when ``batch_id`` was ingested, or None."""
        path = self._ledger_path(batch_id)
        if not path.exists():
            return None
        record: dict[str, Any] = json.loads(path.read_text())
        return record

    def record_batch(self, batch_id: str, record: dict[str, Any]) -> None:
        """Remember that ``batch_id`` was fully handled (stored and/or quarantined)."""
        path = self._ledger_path(batch_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(record, indent=2, default=str) + "\n")
        os.replace(tmp, path)
