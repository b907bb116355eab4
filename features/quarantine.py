"""Quarantine of rejected batches (DESIGN.md section 3: never silently dropped).

Layout, one folder per rejected (table, batch, service)::

    <root>/<table>/<batch_id>/<service or "_batch">/
        rows.csv         the raw input rows exactly as received (unparseable text survives)
        validation.json  what failed and why (each failure with its bad-input kind), with
                         the GE validation result
        report.html      the same for a human, self-contained

Writing the same (table, batch_id, service) again overwrites the folder's files, so a
retried ingest task leaves one copy. Folder names are made path-safe; a name that had to
change gets a short hash of the original so two services never share a folder.
"""

from __future__ import annotations

import hashlib
import html
import json
import os
import re
from pathlib import Path
from typing import Any

import pandas as pd

from features.validation import BatchValidation, Failure

BATCH_FOLDER = "_batch"
"""Folder of a whole-batch quarantine (service_id None)."""

_FILES = ("rows.csv", "validation.json", "report.html")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_DOTS = re.compile(r"\.{2,}")
# Raw rows shown in the HTML report; the full set is in rows.csv.
_PREVIEW_ROWS = 20


def safe_name(name: str) -> str:
    """A folder name for ``name``: no separators, no '..' anywhere, no leading dot.

    Names that are already safe are kept; others get the unsafe runs replaced by '_' and a
    hash suffix of the original, so 'a/b' and 'a_b' stay apart.

    Args:
        name: Table, batch id or service id.

    Returns:
        A single path component.
    """
    cleaned = _DOTS.sub("_", _UNSAFE.sub("_", name)).lstrip(".")
    if cleaned == name and cleaned and cleaned != BATCH_FOLDER:
        return cleaned
    digest = hashlib.sha256(name.encode("utf-8")).hexdigest()[:8]
    return f"{cleaned[:80] or 'unnamed'}-{digest}"


def quarantine_folder(root: Path, *, table: str, batch_id: str, service_id: str | None) -> Path:
    """Where :func:`write_quarantine` puts one (table, batch, service)."""
    service = BATCH_FOLDER if service_id is None else safe_name(service_id)
    return Path(root) / safe_name(table) / safe_name(batch_id) / service


def write_quarantine(
    root: Path,
    *,
    table: str,
    batch_id: str,
    service_id: str | None,
    raw_rows: pd.DataFrame,
    validation: BatchValidation,
    source: str,
) -> Path:
    """Write one rejected group: raw rows, the validation result and a report.

    Args:
        root: Quarantine root folder.
        table: Table of the batch.
        batch_id: Id of the ingested batch.
        service_id: The rejected service, or None when the whole batch is rejected.
        raw_rows: The input rows exactly as received (before conforming).
        validation: The batch's validation.
        source: Where the batch came from (source name, file path).

    Returns:
        The folder written.
    """
    folder = quarantine_folder(root, table=table, batch_id=batch_id, service_id=service_id)
    folder.mkdir(parents=True, exist_ok=True)
    record = _record(
        table=table,
        batch_id=batch_id,
        service_id=service_id,
        raw_rows=raw_rows,
        validation=validation,
        source=source,
    )
    _write_atomic(folder / "rows.csv", raw_rows.to_csv(index=False))
    _write_atomic(
        folder / "validation.json", json.dumps(record, indent=2, default=str, allow_nan=False)
    )
    _write_atomic(folder / "report.html", _html(record, raw_rows))
    return folder


def list_quarantine(root: Path) -> list[dict[str, Any]]:
    """Summarise every quarantined group under ``root``.

    Args:
        root: Quarantine root folder (may not exist yet).

    Returns:
        One dict per folder, sorted by path: table, batch_id, service (None for a whole
        batch), n_rows, reasons (failure sentences), kinds (their bad-input kinds, in
        order, each once), path.
    """
    root = Path(root)
    if not root.is_dir():
        return []
    out = []
    for path in sorted(root.glob("*/*/*/validation.json")):
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
            reasons = [f["reason"] for f in record["failures"]]
            kinds = list(dict.fromkeys(f["kind"] for f in record["failures"]))
            item = {
                "table": record["table"],
                "batch_id": record["batch_id"],
                "service": record["service"],
                "n_rows": record["n_rows"],
                "reasons": reasons,
                "kinds": kinds,
            }
        except (OSError, ValueError, KeyError, TypeError) as exc:
            # A damaged record is still quarantined data; list it rather than hide it.
            table, batch_id, service = path.parts[-4:-1]
            item = {
                "table": table,
                "batch_id": batch_id,
                "service": service,
                "n_rows": None,
                "reasons": [f"unreadable validation.json: {exc}"],
                "kinds": [],
            }
        item["path"] = str(path.parent)
        out.append(item)
    return out


def _record(
    *,
    table: str,
    batch_id: str,
    service_id: str | None,
    raw_rows: pd.DataFrame,
    validation: BatchValidation,
    source: str,
) -> dict[str, Any]:
    """The JSON record of one group: its own failures plus the batch's table failures."""
    failures: list[Failure] = list(validation.table_failures)
    if service_id is None:
        notices = list(validation.notices)
        for verdict in validation.services.values():
            failures.extend(verdict.failures)
        batch_rows = list(range(validation.n_rows))
    else:
        own = validation.services.get(service_id)
        notices = list(own.notices) if own is not None else []
        if own is not None:
            failures.extend(own.failures)
        batch_rows = [int(r) for r in validation.rows_of(service_id)]
    return {
        "table": table,
        "batch_id": batch_id,
        "service": service_id,
        "source": source,
        "n_rows": len(raw_rows),
        "batch_rows": batch_rows,
        "failures": [
            {
                "kind": f.kind,
                "expectation": f.expectation,
                "column": f.column,
                "reason": f.reason,
                "rows": list(f.rows),
            }
            for f in failures
        ],
        "warnings": [{"kind": n.kind, "message": n.message} for n in notices],
        "ge_result": validation.ge_result,
    }


def _write_atomic(path: Path, text: str) -> None:
    # A crash mid-write must not leave a half file that looks like a complete record.
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _html(record: dict[str, Any], raw_rows: pd.DataFrame) -> str:
    """A self-contained page; every piece of data text is escaped."""

    def esc(value: object) -> str:
        return html.escape("" if value is None else str(value), quote=True)

    service = record["service"] if record["service"] is not None else "(whole batch)"
    title = f"Quarantined {record['table']} / {record['batch_id']} / {service}"
    failure_rows = (
        "\n".join(
            f"<tr><td>{esc(f['kind'])}</td><td>{esc(f['expectation'])}</td>"
            f"<td>{esc(f['column'])}</td>"
            f"<td>{esc(f['reason'])}</td><td>{len(f['rows']) or 'whole batch'}</td></tr>"
            for f in record["failures"]
        )
        or '<tr><td colspan="5">none</td></tr>'
    )
    warnings = (
        "\n".join(f"<li>{esc(w['kind'])}: {esc(w['message'])}</li>" for w in record["warnings"])
        or "<li>none</li>"
    )
    preview = raw_rows.head(_PREVIEW_ROWS)
    head = "".join(f"<th>{esc(c)}</th>" for c in preview.columns)
    body = "\n".join(
        "<tr>" + "".join(f"<td>{esc(v)}</td>" for v in row) + "</tr>"
        for row in preview.itertuples(index=False, name=None)
    )
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{esc(title)}</title>
<style>
body {{ font-family: sans-serif; margin: 2em; }}
table {{ border-collapse: collapse; }}
td, th {{ border: 1px solid #ccc; padding: 0.2em 0.5em; text-align: left; }}
th {{ background: #eee; }}
</style>
</head>
<body>
<h1>{esc(title)}</h1>
<p>Source: {esc(record["source"])}<br>
Rows quarantined: {esc(record["n_rows"])}<br>
Files: {", ".join(esc(f) for f in _FILES)}<br>
Row numbers in reasons are positions in the whole batch (see batch_rows in
validation.json); rows.csv holds this group's rows only.</p>
<h2>Failures</h2>
<table>
<tr><th>Kind</th><th>Expectation</th><th>Column</th><th>Reason</th><th>Failing rows</th></tr>
{failure_rows}
</table>
<h2>Warnings</h2>
<ul>
{warnings}
</ul>
<h2>First {len(preview)} raw row(s)</h2>
<table>
<tr>{head}</tr>
{body}
</table>
</body>
</html>
"""
