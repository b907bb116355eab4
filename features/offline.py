"""The offline store: validated rows of every contract table as partitioned Parquet.

Layout under ``root``::

    <table>/service=<quoted service_id>/date=<YYYY-MM-DD>/part.parquet   per-minute tables
    <table>/service=<quoted service_id>/part.parquet                     service_profiles
    scaling_decisions/date=<YYYY-MM-DD>/part-<seq>-<kind>-<first>-<last>-<token>.parquet
    _batches/<batch_id>.json                                             ingested batches

One file per (table, service, day) keeps a rewrite small (1,440 rows) when rows of that day
arrive again, and lets a reader touch only the services and days it needs. Appending is
idempotent on (service_id, ts): a row already stored with the same values is left alone, a
row with the same key and new values replaces the old one (a corrected export), so loading
a batch twice leaves one copy. Files are written to a temporary name and renamed, so a
reader never sees half a file.

``scaling_decisions`` (:data:`JOURNALED`) is written the other way round: every minute, for
every service at once, by the inference cycle's decision log, before any target is applied.
One file per service would cost a cycle one file per service (seconds for a thousand), so
it is a journal per day instead. Each append writes one *segment* holding its new and
changed rows; for a key stored in several segments the newest wins (``seq``, a counter per
day, orders them; ``first`` and ``last``, whole seconds of the day, bound the segment's
``ts`` so a read or an append opens only the segments whose time range it touches). The
same guarantees hold: an append reads the overlapping segments to count new, replaced and
unchanged rows and writes nothing when nothing changed, and readers get one row per key.
:meth:`OfflineStore.fold` merges a day's newest run of appended segments (``kind`` ``seg``)
into one (``cmp``) once it reaches :data:`FOLD_AT`, so a day keeps a few dozen files;
:meth:`OfflineStore.compact` merges whole days, including rows stored in the per-service
layout by earlier versions, which are still read (older than any segment) until then.
"""

from __future__ import annotations

import json
import os
import re
import secrets
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

JOURNALED = frozenset({"scaling_decisions"})
"""Tables stored as a journal of segments per day (module docstring)."""

FOLD_AT = 60
"""Appended segments of one day that :meth:`OfflineStore.fold` merges into one (an hour of
inference cycles: a merge reads about 60 x services rows)."""

_SEGMENT = re.compile(r"part-(\d{9})-(seg|cmp)-(\d{5})-(\d{5})-([0-9a-f]+)\.parquet")
_DAY_S = 86_400
_ATTEMPTS = 3  # a fold or compaction may remove segments between a listing and the read


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


@dataclass(frozen=True)
class _Segment:
    """One segment file of a journaled table's day (name fields, module docstring)."""

    path: Path
    seq: int
    kind: str
    first_s: int
    last_s: int

    @classmethod
    def parse(cls, path: Path) -> _Segment | None:
        match = _SEGMENT.fullmatch(path.name)
        if match is None:
            return None
        seq, kind, first, last, _ = match.groups()
        return cls(path, int(seq), kind, int(first), int(last))

    def overlaps(self, first_s: float, last_s: float) -> bool:
        return self.first_s <= last_s and self.last_s >= first_s


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


def _seconds_of_day(ts: pd.Series, day: pd.Timestamp) -> tuple[int, int]:
    """Whole seconds of the day bounding ``ts`` (floor of the first, ceiling of the last)."""
    offsets = (ts - day) / pd.Timedelta(seconds=1)
    return int(np.floor(offsets.min())), int(np.ceil(offsets.max()))


def _newest_wins(frames: list[pd.DataFrame]) -> pd.DataFrame:
    """One row per key from frames listed oldest first: the last frame holding a key wins."""
    rows = pd.concat(frames, ignore_index=True)
    return rows.drop_duplicates(list(KEYS), keep="last", ignore_index=True)


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

    def _service_folders(self, table: str) -> list[str]:
        folder = self.root / contract(table).name
        if not folder.exists():
            return []
        return sorted(
            unquote(p.name.removeprefix("service="))
            for p in folder.iterdir()
            if p.is_dir() and p.name.startswith("service=")
        )

    def services(self, table: str) -> list[str]:
        """Service ids with rows stored in ``table``, sorted."""
        found = set(self._service_folders(table))
        if table in JOURNALED:
            for _, day_dir in self._days(table, None, None):
                frames = self._load(day_dir, None, None, columns=["service_id"])
                found.update(str(s) for f in frames for s in f["service_id"].unique())
        return sorted(found)

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

    # -- journal layout -------------------------------------------------------------------

    def _day_dir(self, table: str, day: pd.Timestamp) -> Path:
        return self.root / table / f"date={day:%Y-%m-%d}"

    def _days(
        self, table: str, start: pd.Timestamp | None, end: pd.Timestamp | None
    ) -> list[tuple[pd.Timestamp, Path]]:
        """A journaled table's day folders that may hold rows in [start, end], oldest first."""
        folder = self.root / table
        if not folder.exists():
            return []
        days = []
        for day_dir in sorted(folder.glob("date=*")):
            day = pd.Timestamp(day_dir.name.removeprefix("date="))
            if start is not None and day + pd.Timedelta(days=1) <= start.normalize():
                continue
            if end is not None and day > end:
                continue
            days.append((day, day_dir))
        return days

    @staticmethod
    def _segments(day_dir: Path) -> list[_Segment]:
        """The day's segments, oldest first (by seq; the zero-padded names sort so)."""
        if not day_dir.exists():
            return []
        found = (_Segment.parse(p) for p in sorted(day_dir.iterdir()))
        return [s for s in found if s is not None]

    def _load(
        self,
        day_dir: Path,
        first_s: float | None,
        last_s: float | None,
        columns: list[str] | None = None,
    ) -> list[pd.DataFrame]:
        """The day's segments overlapping [first_s, last_s] (seconds of the day), oldest first.

        A fold or a compaction may merge segments between the listing and the read; the
        merged segment holds their rows, so the day is listed and read again.
        """
        lo = -1.0 if first_s is None else first_s
        hi = float(_DAY_S) if last_s is None else last_s
        for attempt in range(_ATTEMPTS):
            segments = [s for s in self._segments(day_dir) if s.overlaps(lo, hi)]
            try:
                return [pd.read_parquet(s.path, columns=columns) for s in segments]
            except FileNotFoundError:
                if attempt == _ATTEMPTS - 1:
                    raise
        raise AssertionError("unreachable")

    def _has_legacy(self, table: str) -> bool:
        folder = self.root / table
        return folder.exists() and any(p.name.startswith("service=") for p in folder.iterdir())

    def _legacy_rows(
        self,
        table: str,
        services: Iterable[str],
        start: pd.Timestamp | None,
        end: pd.Timestamp | None,
    ) -> list[pd.DataFrame]:
        """Rows a journaled table holds in the per-service layout (stored before the journal)."""
        return [pd.read_parquet(f) for sid in services for f in self._files(table, sid, start, end)]

    def _legacy_day_files(
        self, table: str, services: Iterable[str], day: pd.Timestamp
    ) -> list[Path]:
        paths = (self._partition(table, sid, day) for sid in services)
        return [p for p in paths if p.exists()]

    def _read_journal(
        self,
        table: str,
        services: Sequence[str] | None,
        start: pd.Timestamp | None,
        end: pd.Timestamp | None,
    ) -> pd.DataFrame | None:
        legacy = self._service_folders(table) if services is None else services
        frames = self._legacy_rows(table, legacy, start, end)
        for day, day_dir in self._days(table, start, end):
            first = None if start is None else (start - day) / pd.Timedelta(seconds=1)
            last = None if end is None else (end - day) / pd.Timedelta(seconds=1)
            frames += self._load(day_dir, first, last)
        if not frames:
            return None
        rows = _newest_wins(frames)
        if services is not None:
            rows = rows[rows["service_id"].isin(list(services))]
        return rows

    def _append_journal(self, table: str, day: pd.Timestamp, rows: pd.DataFrame) -> AppendResult:
        spec = contract(table)
        rows = rows.reset_index(drop=True)
        day_dir = self._day_dir(table, day)
        first_s, last_s = _seconds_of_day(rows["ts"], day)
        sids = rows["service_id"].astype(str).unique().tolist()
        # Rows stored before the journal existed count as stored (and are older than it).
        before = (
            [pd.read_parquet(p) for p in self._legacy_day_files(table, sids, day)]
            if self._has_legacy(table)
            else []
        )
        before += self._load(day_dir, first_s, last_s)
        fresh = np.ones(len(rows), dtype=bool)
        unchanged = replaced = 0
        if before:
            stored = _newest_wins(before).astype(spec.dtypes()).set_index(list(KEYS))
            keys = pd.MultiIndex.from_frame(rows[list(KEYS)])
            seen = keys.isin(stored.index)
            if seen.any():
                old = stored.loc[keys[seen]].reset_index()[spec.names]
                same = _same_rows(old, rows[seen].reset_index(drop=True))
                fresh[np.flatnonzero(seen)[same]] = False
                unchanged = int(same.sum())
                replaced = int(seen.sum()) - unchanged
        if not fresh.any():
            return AppendResult(unchanged=unchanged)
        segments = self._segments(day_dir)
        seq = max((s.seq for s in segments), default=0) + 1
        out = rows[fresh].sort_values(list(KEYS), ignore_index=True)
        self._write_segment(day_dir, out, day, seq, "seg")
        new = len(rows) - replaced - unchanged
        return AppendResult(new=new, replaced=replaced, unchanged=unchanged)

    @staticmethod
    def _write_segment(
        day_dir: Path, rows: pd.DataFrame, day: pd.Timestamp, seq: int, kind: str
    ) -> Path:
        first_s, last_s = _seconds_of_day(rows["ts"], day)
        name = f"part-{seq:09d}-{kind}-{first_s:05d}-{last_s:05d}-{secrets.token_hex(4)}.parquet"
        path = day_dir / name
        _write_atomic(rows, path)
        return path

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
        if table in JOURNALED:
            for day, rows in frame.groupby(frame["ts"].dt.normalize(), sort=True):
                total += self._append_journal(table, pd.Timestamp(day), rows)
        elif spec.per_minute:
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

    def fold(self, table: str, day: pd.Timestamp, at: int | None = None) -> int:
        """Merge the day's newest run of appended segments into one once it has ``at``.

        The run is every segment after the day's last merged one, so the merged segment
        takes the run's newest ``seq`` and keeps its place in the order: a segment appended
        meanwhile is newer still. A crash between writing it and removing the run leaves
        rows twice, which readers resolve (the merged copy is the newest).

        Args:
            table: A journaled table (:data:`JOURNALED`).
            day: The day (any time of it).
            at: Segments the run needs before it is merged (>= 2; default
                :data:`FOLD_AT`).

        Returns:
            The number of segments merged (0: nothing to do).
        """
        if table not in JOURNALED:
            raise ValueError(f"{table} is not journaled; only {sorted(JOURNALED)} are")
        at = FOLD_AT if at is None else at
        if at < 2:
            raise ValueError(f"at must be >= 2, got {at}")
        day = pd.Timestamp(day).normalize()
        segments = self._segments(self._day_dir(table, day))
        run: list[_Segment] = []
        for segment in reversed(segments):
            if segment.kind != "seg":
                break
            run.insert(0, segment)
        if len(run) < at:
            return 0
        try:
            frames = [pd.read_parquet(s.path) for s in run]
        except FileNotFoundError:  # another process merged them first
            return 0
        self._replace(table, day, frames, run, [])
        return len(run)

    def compact(self, table: str, before: pd.Timestamp | None = None) -> int:
        """Merge each day of a journaled table into one segment, legacy rows included.

        The maintenance (and migration) step: rows stored in the per-service layout by
        earlier versions move into their day's segment and their files are removed. Safe
        to run beside writers: a segment appended while a day is merged is newer than the
        merged one.

        Args:
            table: A journaled table (:data:`JOURNALED`).
            before: Only days before this one (default every day; pass today to leave
                the day being written alone).

        Returns:
            The number of files fewer (0: every day was already one segment, or a lone
            legacy file moved into one).
        """
        if table not in JOURNALED:
            raise ValueError(f"{table} is not journaled; only {sorted(JOURNALED)} are")
        legacy: dict[pd.Timestamp, list[Path]] = {}
        for sid in self._service_folders(table):
            for path in self._files(table, sid, None, None):
                day = pd.Timestamp(path.parent.name.removeprefix("date="))
                legacy.setdefault(day, []).append(path)
        days = {day for day, _ in self._days(table, None, None)} | set(legacy)
        limit = None if before is None else pd.Timestamp(before).normalize()
        removed = 0
        for day in sorted(days):
            if limit is not None and day >= limit:
                continue
            segments = self._segments(self._day_dir(table, day))
            old = legacy.get(day, [])
            if not old and len(segments) < 2:
                continue
            try:
                frames = [pd.read_parquet(p) for p in old] + [
                    pd.read_parquet(s.path) for s in segments
                ]
            except FileNotFoundError:  # a fold ran meanwhile: leave the day to the next run
                continue
            self._replace(table, day, frames, segments, old)
            removed += len(segments) + len(old) - 1
        return removed

    def _replace(
        self,
        table: str,
        day: pd.Timestamp,
        frames: list[pd.DataFrame],
        segments: list[_Segment],
        legacy: list[Path],
    ) -> None:
        """Write ``frames`` (oldest first) as one merged segment, then remove their files."""
        rows = _newest_wins(frames).astype(contract(table).dtypes())
        seq = max((s.seq for s in segments), default=0)
        rows = rows.sort_values(list(KEYS), ignore_index=True)
        self._write_segment(self._day_dir(table, day), rows, day, seq, "cmp")
        for segment in segments:
            segment.path.unlink(missing_ok=True)
        for path in legacy:
            path.unlink(missing_ok=True)
            for folder in (path.parent, path.parent.parent):  # date=..., then service=...
                try:
                    folder.rmdir()
                except OSError:  # not empty
                    break

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
        if table in JOURNALED:
            rows = self._read_journal(table, services, start, end)
            if rows is None:
                return empty(table)
            out = rows.astype(spec.dtypes())
        else:
            wanted = self.services(table) if services is None else list(services)
            frames = [
                pd.read_parquet(path)
                for sid in wanted
                for path in self._files(table, sid, start, end)
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
        wanted = [str(s) for s in services]
        frames = []
        for sid in wanted:
            files = self._files(table, sid, None, None)
            if files:
                newest = pd.read_parquet(files[-1])
                frames.append(newest.sort_values("ts").tail(1))
        if table in JOURNALED:
            frames += self._journal_last_rows(table, set(wanted))
        if not frames:
            return empty(table)
        out = pd.concat(frames, ignore_index=True).astype(spec.dtypes())
        if table in JOURNALED:
            # Journal rows come after the legacy ones: on equal ts the journal's copy wins.
            out = out.sort_values("ts", kind="stable").groupby("service_id", sort=False).tail(1)
            order = {sid: k for k, sid in enumerate(wanted)}
            out = out.sort_values("service_id", key=lambda s: s.map(order), ignore_index=True)
        return out

    def _journal_last_rows(self, table: str, wanted: set[str]) -> list[pd.DataFrame]:
        """Newest journal row per wanted service, scanning days from the newest back."""
        frames = []
        for _, day_dir in reversed(self._days(table, None, None)):
            if not wanted:
                break
            segments = self._load(day_dir, None, None)
            if not segments:
                continue
            rows = _newest_wins(segments)
            rows = rows[rows["service_id"].isin(wanted)]
            if rows.empty:
                continue
            newest = rows.sort_values("ts").groupby("service_id", sort=False).tail(1)
            frames.append(newest)
            wanted -= set(newest["service_id"])
        return frames

    def newest_ts(self, table: str) -> pd.Timestamp | None:
        """Newest ts stored in ``table`` over all services, or None when empty."""
        if table in JOURNALED:
            return self._journal_newest_ts(table)
        last = self.last_rows(table, self.services(table))
        return None if last.empty else pd.Timestamp(last["ts"].max())

    def _journal_newest_ts(self, table: str) -> pd.Timestamp | None:
        legacy = None
        stored = self._service_folders(table)
        if stored:
            # Rows stored before the journal existed: the newest file of each service.
            last = [
                pd.read_parquet(files[-1], columns=["ts"])["ts"].max()
                for files in (self._files(table, sid, None, None) for sid in stored)
                if files
            ]
            legacy = pd.Timestamp(max(last)) if last else None
        for _, day_dir in reversed(self._days(table, None, None)):
            segments = self._segments(day_dir)
            if not segments:
                continue
            # Only the segments with the latest bound can hold the day's newest ts.
            latest = max(s.last_s for s in segments)
            frames = self._load(day_dir, latest, latest, columns=["ts"])
            newest = pd.Timestamp(max(f["ts"].max() for f in frames))
            return newest if legacy is None else max(newest, legacy)
        return legacy

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
