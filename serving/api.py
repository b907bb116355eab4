"""HTTP API of the decision engine, for callers outside Prefect.

``create_app`` builds a FastAPI app around injected callables, so this module holds
no engine, no model and no global app:

- ``POST /v1/decisions``: features of one or more services in, one scaling decision
  per service out. The body is checked before the engine sees it (size, content type,
  JSON, then a strict schema: no string numbers, no booleans as numbers, no NaN or
  Infinity, no unknown fields).
- ``GET /healthz``: the engine's health report; 200 when it can decide (``ok`` or
  ``degraded``), 503 otherwise, so a load balancer drains an instance with no model.
- ``GET /metrics``: the :class:`~serving.metrics.ServingMetrics` registry in the
  Prometheus text format.

Every 4xx/5xx body is ``{"error": <kind>, "detail": <message naming the field>}``;
a schema error also lists the failing fields under ``"errors"``. A refusal of bad input
also names its bad-input kind (:data:`features.contracts.BAD_INPUT_KINDS`) under
``"kind"`` (and per field), e.g. ``negative_count``, ``non_finite``, ``oversize_payload``.

Run it with uvicorn's factory mode on an entry point that builds the engine, e.g.
``uvicorn --factory mypkg.entry:build_app``.
"""

from __future__ import annotations

import hmac
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from http import HTTPStatus
from typing import Annotated, Any, Literal

import numpy as np
import pandas as pd
from fastapi import FastAPI, Request, Response
from fastapi.encoders import jsonable_encoder
from fastapi.responses import JSONResponse
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from features.contracts import BAD_INPUT, bad_input_kind
from serving.inputs import DECISION_COLUMNS
from serving.metrics import ServingMetrics

logger = logging.getLogger(__name__)

DEFAULT_MAX_SERVICES = 1000
"""Services per request unless ``create_app`` is told otherwise."""

DEFAULT_MAX_BODY_BYTES = 4 * 1024 * 1024
"""Request body limit unless ``create_app`` is told otherwise: 1000 services with
their 288 counts each fit with room to spare."""

MAX_FUTURE = timedelta(minutes=5)
"""How far ``ts`` may lie after the server clock: tolerates clock skew, rejects a
wrong time zone or unit (a naive local time east of UTC lands hours ahead)."""

RECENT_MINUTES = 120
"""Length of ``recent_events_120m``: one-minute counts, oldest first."""

WEEK_HOURS = 168
"""Length of ``hourly_events_7d``: hourly counts, oldest first."""

MAX_LISTED_ERRORS = 20
"""Field errors listed in a 422 body; a batch of NaNs would otherwise list thousands."""

SERVICE_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"

ErrorKind = Literal[
    "unauthorized",
    "bad_request",
    "malformed_json",
    "validation_error",
    "payload_too_large",
    "unsupported_media_type",
    "rejected_by_engine",
    "not_ready",
    "internal_error",
]


class NotReady(Exception):
    """Raised by the decision engine when no model and no fallback can decide (HTTP 503)."""


def _refusal(kind: str, message: str) -> PydanticCustomError:
    """A validation error whose pydantic type is the bad-input kind it reports."""
    bad_input_kind(kind)
    # No context: the message is final, braces in it are not placeholders.
    return PydanticCustomError(kind, message)


# --------------------------------------------------------------------------- request


NonNegFloat = Annotated[float, Field(ge=0)]
PosFloat = Annotated[float, Field(gt=0)]
NonNegInt = Annotated[int, Field(ge=0)]


class _StrictModel(BaseModel):
    """Strict numbers (no ``"12"``, no ``true`` as 1; ints are fine for floats), finite
    floats only (JSON parsers accept ``NaN``/``Infinity`` literals), no unknown fields."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


class ServiceProfile(_StrictModel):
    """The service's contract and limits (the ``service_profiles`` table)."""

    criticality: Annotated[int, Field(ge=1, le=3, description="Tier, 1 = most critical.")]
    sla_latency_s: Annotated[PosFloat, Field(description="Latency an event must meet, s.")]
    sla_target: Annotated[
        float, Field(gt=0, le=1, description="Fraction of events that must meet it.")
    ]
    cost_per_job_hour: Annotated[NonNegFloat, Field(description="Price of one job-hour.")]
    daily_budget: Annotated[PosFloat, Field(description="Spend allowed per day.")]
    min_jobs: Annotated[NonNegInt, Field(description="Fewest jobs allowed.")]
    max_jobs: Annotated[int, Field(ge=1, description="Most jobs allowed.")]
    max_step: Annotated[int, Field(ge=1, description="Largest change per decision.")]
    job_capacity_eps: Annotated[PosFloat, Field(description="Events per second per job.")]
    job_startup_s: Annotated[NonNegFloat, Field(description="Seconds until a new job serves.")]

    @model_validator(mode="after")
    def _min_below_max(self) -> ServiceProfile:
        if self.min_jobs > self.max_jobs:
            raise _refusal(
                "inverted_pair",
                f"min_jobs ({self.min_jobs}) must be <= max_jobs ({self.max_jobs})",
            )
        return self


class ServiceState(_StrictModel):
    """The service's state at ``ts``; the last four fields are optional."""

    jobs_running: Annotated[NonNegInt, Field(description="Jobs serving.")]
    jobs_starting: Annotated[NonNegInt, Field(description="Jobs asked for, not yet serving.")]
    queue_length: Annotated[NonNegFloat, Field(description="Events waiting.")]
    events_in: Annotated[NonNegFloat, Field(description="Events arrived in the minute.")]
    events_dropped: Annotated[NonNegFloat, Field(description="Events dropped in the minute.")]
    utilization: Annotated[float, Field(ge=0, le=1.5, description="Busy fraction of jobs.")]
    minute_of_day: Annotated[int, Field(ge=0, le=1439, description="UTC minute of the day.")]
    day_of_week: Annotated[int, Field(ge=0, le=6, description="UTC weekday, Monday = 0.")]
    events_processed: Annotated[
        NonNegFloat | None, Field(description="Events processed in the minute.")
    ] = None
    jobs_target: Annotated[
        NonNegInt | None, Field(description="Job target currently set (default: running).")
    ] = None
    steps_since_change: Annotated[
        NonNegInt | None, Field(description="Decisions since the target last changed.")
    ] = None
    budget_used_today: Annotated[NonNegFloat | None, Field(description="Spend so far today.")] = (
        None
    )


@dataclass(frozen=True)
class _ValidationContext:
    """What validation needs from the server: its clock and its batch limit."""

    now: datetime  # naive UTC
    max_services: int


class ServiceFeatures(_StrictModel):
    """Everything the engine needs to decide for one service at one minute."""

    service_id: Annotated[str, Field(min_length=1, max_length=128, pattern=SERVICE_ID_PATTERN)]
    ts: Annotated[
        datetime,
        Field(
            description="The last observed minute, ISO 8601; an offset is converted to "
            "UTC, a time without one is taken as UTC."
        ),
    ]
    recent_events_120m: Annotated[
        list[NonNegFloat],
        Field(
            min_length=RECENT_MINUTES,
            max_length=RECENT_MINUTES,
            description="The last 120 one-minute event counts, oldest first.",
        ),
    ]
    hourly_events_7d: Annotated[
        list[NonNegFloat],
        Field(
            min_length=WEEK_HOURS,
            max_length=WEEK_HOURS,
            description="The last 168 hourly event counts, oldest first.",
        ),
    ]
    profile: ServiceProfile
    state: ServiceState

    @field_validator("ts")
    @classmethod
    def _naive_utc_not_future(cls, ts: datetime, info: ValidationInfo) -> datetime:
        ts = _naive_utc(ts)
        context = info.context
        if isinstance(context, _ValidationContext) and ts > context.now + MAX_FUTURE:
            raise _refusal(
                "future_timestamp",
                f"ts {ts.isoformat()}Z is more than {MAX_FUTURE.seconds // 60} minutes after "
                f"the server clock ({context.now.isoformat(timespec='seconds')}Z); send the "
                "last observed minute in UTC or with its offset",
            )
        return ts


class DecisionRequest(_StrictModel):
    """Body of ``POST /v1/decisions``."""

    services: Annotated[
        list[ServiceFeatures],
        Field(min_length=1, description="One entry per service; service_id values unique."),
    ]

    @field_validator("services")
    @classmethod
    def _bounded_and_unique(
        cls, services: list[ServiceFeatures], info: ValidationInfo
    ) -> list[ServiceFeatures]:
        context = info.context
        limit = (
            context.max_services
            if isinstance(context, _ValidationContext)
            else DEFAULT_MAX_SERVICES
        )
        if len(services) > limit:
            raise _refusal(
                "too_many_services",
                f"at most {limit} services per request, got {len(services)}; split the batch",
            )
        first: dict[str, int] = {}
        for i, service in enumerate(services):
            j = first.setdefault(service.service_id, i)
            if j != i:
                raise _refusal(
                    "duplicate_key",
                    f"duplicate service_id {service.service_id!r} (services[{j}] and "
                    f"services[{i}]); send each service once",
                )
        return services


PROFILE_FIELDS: tuple[str, ...] = tuple(ServiceProfile.model_fields)
STATE_FIELDS: tuple[str, ...] = tuple(
    name for name, f in ServiceState.model_fields.items() if f.is_required()
)
OPTIONAL_FIELDS: tuple[str, ...] = tuple(
    name for name, f in ServiceState.model_fields.items() if not f.is_required()
)

REQUEST_FIELDS: tuple[str, ...] = (
    "service_id",
    "ts",
    "recent_events_120m",
    "hourly_events_7d",
    *PROFILE_FIELDS,
    *STATE_FIELDS,
    *OPTIONAL_FIELDS,
)
"""Columns of the frame handed to ``decide``, in order (see :func:`request_frame`)."""

DECISION_FIELDS: tuple[str, ...] = DECISION_COLUMNS
"""Columns ``decide`` returns, in the order each decision is answered."""


def _authorized(request: Request, token: str | None) -> bool:
    """Whether the request carries ``Authorization: Bearer <token>`` (constant-time check)."""
    if not token:
        return False
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not given:
        return False
    return hmac.compare_digest(given.strip().encode(), token.encode())


def _authorize(request: Request, token: str | None) -> None:
    """Raise a 401 unless :func:`_authorized`."""
    if _authorized(request, token):
        return
    detail = (
        "the server has no API token configured (set AUTOSCALER_API_TOKEN), so no request "
        "is accepted"
        if not token
        else "send the API token as 'Authorization: Bearer <token>'"
    )
    raise ApiError(401, "unauthorized", detail)


def _naive_utc(ts: datetime) -> datetime:
    """``ts`` as naive UTC; a naive ``ts`` is already taken as UTC."""
    return ts if ts.tzinfo is None else ts.astimezone(UTC).replace(tzinfo=None)


def request_frame(request: DecisionRequest) -> pd.DataFrame:
    """The frame ``decide`` receives: one row per service, columns :data:`REQUEST_FIELDS`.

    ``service_id`` is str, ``ts`` is ``datetime64[ns]`` (naive UTC), the two count
    sequences are Python lists of floats in object columns, integer profile and state
    fields are ``int64``, float fields ``float64``. The optional fields are always
    present as ``float64``, NaN where the request left them out (so ``jobs_target``
    and ``steps_since_change`` are whole numbers stored as floats).

    Args:
        request: A validated request.

    Returns:
        The input frame, in request order, with a ``RangeIndex``.
    """
    services = request.services
    columns: dict[str, pd.Series] = {
        "service_id": pd.Series([s.service_id for s in services], dtype=object),
        "ts": pd.Series(pd.to_datetime([s.ts for s in services]), dtype="datetime64[ns]"),
        "recent_events_120m": _object_series([s.recent_events_120m for s in services]),
        "hourly_events_7d": _object_series([s.hourly_events_7d for s in services]),
    }
    for name in PROFILE_FIELDS:
        columns[name] = pd.Series(
            [getattr(s.profile, name) for s in services], dtype=_FIELD_DTYPES[name]
        )
    for name in (*STATE_FIELDS, *OPTIONAL_FIELDS):
        values = [getattr(s.state, name) for s in services]
        if name in OPTIONAL_FIELDS:
            values = [np.nan if v is None else v for v in values]
        columns[name] = pd.Series(values, dtype=_FIELD_DTYPES[name])
    return pd.DataFrame(columns, columns=list(REQUEST_FIELDS))


def _field_dtypes() -> dict[str, str]:
    """Frame dtype per profile/state field, read from the models so they cannot drift."""
    dtypes: dict[str, str] = {}
    for model in (ServiceProfile, ServiceState):
        for name, info in model.model_fields.items():
            # Optional fields are float64 whatever their type: NaN marks "absent".
            required_int = info.is_required() and info.annotation is int
            dtypes[name] = "int64" if required_int else "float64"
    return dtypes


_FIELD_DTYPES = _field_dtypes()


def _object_series(values: list[list[float]]) -> pd.Series:
    """An object Series with one list per cell (pandas would try to build a 2-D block)."""
    cells = np.empty(len(values), dtype=object)
    for i, value in enumerate(values):
        cells[i] = value
    return pd.Series(cells, dtype=object)


# -------------------------------------------------------------------------- response


class Decision(BaseModel):
    """One decision as answered (documentation of the response; NaN is sent as null)."""

    service_id: str
    ts: datetime
    jobs_before: int
    jobs_after: int
    action: int = Field(description="jobs_after - jobs_before.")
    proposed_jobs: float | None = Field(description="The controller's proposal, if any.")
    shield_reason: str = Field(description="Why the shield intervened; '' = untouched.")
    controller: str
    forecaster_version: str | None
    controller_version: str | None
    forecast_q10: float | None
    forecast_q50: float | None
    forecast_q90: float | None


class DecisionResponse(BaseModel):
    """Body of a 200 from ``POST /v1/decisions``."""

    decisions: list[Decision] = Field(description="One per service, in request order.")
    latency_ms: float = Field(description="Wall time of the engine call, ms.")


class FieldError(BaseModel):
    """One failing field of a 422."""

    loc: str = Field(description="Path of the field, e.g. services[0].state.utilization.")
    msg: str
    type: str = Field(description="pydantic's error type.")
    kind: str = Field(description="Bad-input kind, e.g. negative_count.")


class ErrorBody(BaseModel):
    """Body of every error response."""

    error: str = Field(description="Short kind, e.g. validation_error.")
    detail: str = Field(description="What is wrong, naming the field.")
    kind: str | None = Field(
        default=None,
        description="Bad-input kind of a refused request (of its first failing field), "
        "e.g. non_finite, oversize_payload; absent for other errors.",
    )
    errors: list[FieldError] | None = Field(
        default=None, description="Failing fields (schema errors only, at most 20)."
    )


class ApiError(Exception):
    """An error answered as ``{"error": kind, "detail": detail}`` with ``status``.

    Args:
        status: HTTP status code.
        kind: Short error kind.
        detail: Human message naming the field or header at fault.
        input_kind: The bad-input kind, when bad input is refused.
    """

    def __init__(
        self, status: int, kind: ErrorKind, detail: str, input_kind: str | None = None
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.kind = kind
        self.detail = detail
        self.input_kind = None if input_kind is None else bad_input_kind(input_kind).name


class _EngineContractError(Exception):
    """``decide`` returned a frame that breaks its documented contract."""


def _error_response(
    status: int,
    kind: str,
    detail: str,
    errors: list[dict[str, str]] | None = None,
    input_kind: str | None = None,
) -> JSONResponse:
    body: dict[str, Any] = {"error": kind, "detail": detail}
    if input_kind is not None:
        body["kind"] = bad_input_kind(input_kind).name
    if errors is not None:
        body["errors"] = errors
    return JSONResponse(body, status_code=status)


def _loc_path(loc: Sequence[int | str]) -> str:
    """``("services", 0, "ts")`` -> ``"services[0].ts"``; the empty loc is the body."""
    path = ""
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else part)
    return path or "body"


# Pydantic's wording, made specific to what this API refuses and why.
_MESSAGES = {
    "finite_number": "must be a finite number (NaN and Infinity are not accepted)",
    "int_type": "must be an integer (JSON number; strings and booleans are not accepted)",
    "float_type": "must be a number (strings and booleans are not accepted)",
    "extra_forbidden": "unknown field",
    "missing": "field required",
}


def _field_message(error: Any) -> str:
    kind = error["type"]
    if kind == "value_error":
        # The text of our own validators, without pydantic's "Value error, " prefix.
        return str(error["ctx"]["error"])
    return _MESSAGES.get(kind, str(error["msg"]))


_KIND_OF_TYPE = {
    "finite_number": "non_finite",
    "extra_forbidden": "unknown_field",
    "missing": "missing_required",
    "too_short": "wrong_length",
    "too_long": "wrong_length",
    "greater_than": "out_of_range",
    "greater_than_equal": "out_of_range",
    "less_than": "out_of_range",
    "less_than_equal": "out_of_range",
}


def _input_kind(error: Any) -> str:
    """The bad-input kind of one pydantic error (its input is read here, never echoed)."""
    kind = error["type"]
    if kind in BAD_INPUT:
        return str(kind)  # raised by our own validators (see _refusal)
    loc = error["loc"]
    if kind.startswith(("datetime", "timezone")):
        return "bad_timestamp"
    if kind.startswith("string_") and loc and loc[-1] == "service_id":
        return "bad_service_id"
    if kind == "greater_than_equal" and error.get("ctx", {}).get("ge") == 0:
        return "negative_count"
    if kind == "int_type" and isinstance(error.get("input"), float):
        return "non_integer" if np.isfinite(error["input"]) else "non_finite"
    return _KIND_OF_TYPE.get(kind, "wrong_type")


def _validation_response(exc: ValidationError) -> JSONResponse:
    """400 for a body that is not JSON, else 422 naming the first failing field."""
    errors = exc.errors(include_url=False)
    for error in errors:
        if error["type"] == "json_invalid":
            return _error_response(
                400,
                "malformed_json",
                f"request body is not valid JSON: {error['ctx']['error']}",
                input_kind="malformed_json",
            )
    listed = [
        {
            "loc": _loc_path(e["loc"]),
            "msg": _field_message(e),
            "type": e["type"],
            "kind": _input_kind(e),
        }
        for e in errors[:MAX_LISTED_ERRORS]
    ]
    detail = f"{listed[0]['loc']}: {listed[0]['msg']}"
    if len(errors) > 1:
        detail += f" (and {len(errors) - 1} more error{'s' if len(errors) > 2 else ''})"
    return _error_response(422, "validation_error", detail, listed, input_kind=listed[0]["kind"])


def _json_cell(value: Any) -> Any:
    """A JSON-ready cell: numpy scalars unboxed, timestamps as ISO 8601 UTC ("Z")."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, pd.Timestamp):
        value = value.to_pydatetime()
    if isinstance(value, datetime):
        return _naive_utc(value).isoformat() + "Z"
    return value


def _decision_records(out: pd.DataFrame, request: pd.DataFrame) -> list[dict[str, Any]]:
    """The decisions to answer, one dict per row, NaN and None as null.

    Raises:
        _EngineContractError: If columns are missing, or the rows do not match the
            request one to one in order.
    """
    missing = [name for name in DECISION_FIELDS if name not in out.columns]
    if missing:
        raise _EngineContractError(f"decision frame lacks columns {missing}")
    if len(out) != len(request) or not np.array_equal(
        out["service_id"].to_numpy(dtype=object), request["service_id"].to_numpy(dtype=object)
    ):
        raise _EngineContractError(
            f"decision frame has {len(out)} rows not matching the {len(request)} requested "
            "services in order"
        )
    columns = []
    for name in DECISION_FIELDS:
        column = out[name]
        null = column.isna().to_numpy()
        if pd.api.types.is_datetime64_any_dtype(column.dtype):
            if column.dt.tz is not None:
                column = column.dt.tz_convert("UTC").dt.tz_localize(None)
            values: list[Any] = [f"{t.isoformat()}Z" for t in column.tolist()]
        elif pd.api.types.is_object_dtype(column.dtype):
            values = [_json_cell(v) for v in column.tolist()]
        else:
            # Numeric and bool columns: tolist() already gives Python scalars.
            values = column.tolist()
        if null.any():
            values = [None if n else v for v, n in zip(values, null, strict=True)]
        columns.append(values)
    return [dict(zip(DECISION_FIELDS, row, strict=True)) for row in zip(*columns, strict=True)]


def _json_bytes(body: dict[str, Any]) -> bytes:
    """Encode strictly: a NaN that slipped through must fail here, not reach a client."""
    return json.dumps(body, allow_nan=False, separators=(",", ":")).encode()


# --------------------------------------------------------------------------- serving


@dataclass(frozen=True)
class _DecisionHandler:
    """The synchronous part of ``POST /v1/decisions``: validate, decide, answer.

    Runs in a worker thread: pydantic on 1000 services and the engine are CPU work
    that would otherwise stall the event loop (and ``/healthz`` with it).
    """

    decide: Callable[[pd.DataFrame], pd.DataFrame]
    metrics: ServingMetrics
    max_services: int
    clock: Callable[[], datetime]

    def __call__(self, body: bytes) -> Response:
        context = _ValidationContext(now=_naive_utc(self.clock()), max_services=self.max_services)
        try:
            request = DecisionRequest.model_validate_json(body, context=context)
        except ValidationError as exc:
            return _validation_response(exc)
        frame = request_frame(request)
        start = time.perf_counter()
        try:
            out = self.decide(frame)
        except NotReady as exc:
            return _error_response(
                503, "not_ready", str(exc) or "no model or fallback can decide yet"
            )
        except ValueError as exc:
            return _error_response(422, "rejected_by_engine", str(exc) or "input rejected")
        except Exception:
            logger.exception("decision engine failed on %d services", len(frame))
            return _error_response(
                500, "internal_error", "the decision engine failed; see the server log"
            )
        seconds = time.perf_counter() - start
        try:
            decisions = _decision_records(out, frame)
            payload = _json_bytes({"decisions": decisions, "latency_ms": seconds * 1000.0})
        except (_EngineContractError, TypeError, ValueError):
            # TypeError/ValueError: a cell JSON cannot carry (an object, a stray NaN).
            logger.exception("decision engine broke its output contract")
            return _error_response(
                500, "internal_error", "the decision engine failed; see the server log"
            )
        self.metrics.record_decisions(out, seconds)
        return Response(payload, media_type="application/json")


def _check_json_content_type(request: Request) -> None:
    """415 unless the body is declared as (uncompressed) JSON."""
    declared = request.headers.get("content-type", "")
    media_type = declared.split(";", 1)[0].strip().lower()
    if media_type != "application/json" and not (
        media_type.startswith("application/") and media_type.endswith("+json")
    ):
        raise ApiError(
            415,
            "unsupported_media_type",
            f"Content-Type must be application/json, got {declared or 'none'!r}",
            input_kind="unsupported_media_type",
        )
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding != "identity":
        raise ApiError(
            415,
            "unsupported_media_type",
            f"Content-Encoding {encoding!r} is not supported",
            input_kind="unsupported_media_type",
        )


async def _read_body(request: Request, max_bytes: int) -> bytes:
    """The request body, refused with 413 as soon as it is known to exceed ``max_bytes``.

    ``Content-Length`` is checked before reading; a chunked body (no length) is counted
    while it streams, so an oversize body is never held in memory whole.
    """
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            length = int(declared)
        except ValueError:
            raise ApiError(
                400, "bad_request", f"Content-Length {declared!r} is not an integer"
            ) from None
        if length > max_bytes:
            raise ApiError(
                413,
                "payload_too_large",
                _too_large(f"{length} bytes", max_bytes),
                input_kind="oversize_payload",
            )
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise ApiError(
                413,
                "payload_too_large",
                _too_large(f"more than {max_bytes} bytes", max_bytes),
                input_kind="oversize_payload",
            )
        chunks.append(chunk)
    return b"".join(chunks)


def _too_large(size: str, max_bytes: int) -> str:
    return f"request body of {size} exceeds the limit of {max_bytes} bytes; split the batch"


class _RequestCounter:
    """ASGI middleware counting every answered request by endpoint and status.

    Pure ASGI (not ``BaseHTTPMiddleware``) so it also sees the 413s, 415s and 404s
    answered before a route runs, and adds no task per request.
    """

    def __init__(self, app: ASGIApp, metrics: ServingMetrics, endpoints: frozenset[str]) -> None:
        self.app = app
        self.metrics = metrics
        self.endpoints = endpoints

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        # Raw paths would let a scanner create one series per URL.
        path = scope["path"]
        endpoint = path if path in self.endpoints else "other"
        status = 500  # if the app raises before answering, the server sends a 500

        async def send_counted(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_counted)
        finally:
            self.metrics.record_api_request(endpoint, status)


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _request_schema(max_services: int) -> dict[str, Any]:
    """The request's JSON schema with its ``$defs`` inlined (for the OpenAPI document).

    The body is parsed by hand (size limit first), so FastAPI cannot derive the schema;
    inlining avoids ``#/$defs`` references that do not resolve inside an OpenAPI file.
    """
    schema = DecisionRequest.model_json_schema()
    defs = schema.pop("$defs", {})

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                return resolve(defs[ref.removeprefix("#/$defs/")])
            return {key: resolve(value) for key, value in node.items()}
        if isinstance(node, list):
            return [resolve(value) for value in node]
        return node

    inlined: dict[str, Any] = resolve(schema)
    inlined["properties"]["services"]["maxItems"] = max_services
    return inlined


def create_app(
    decide: Callable[[pd.DataFrame], pd.DataFrame],
    health: Callable[[], dict[str, Any]],
    metrics: ServingMetrics,
    *,
    token: str | None,
    max_services: int = DEFAULT_MAX_SERVICES,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    clock: Callable[[], datetime] = _utc_now,
) -> FastAPI:
    """Build the HTTP API around a decision engine.

    Every request to ``/v1/decisions`` and ``/metrics`` must carry
    ``Authorization: Bearer <token>``; without a configured token nothing gets in (401).
    ``/healthz`` answers anyone with its status only (for liveness probes) and with the
    full report to an authorized caller.

    Args:
        decide: Input frame (:func:`request_frame`) to decision frame
            (:data:`DECISION_FIELDS`, one row per input row, same order). Raises
            :class:`NotReady` (answered 503) when nothing can decide, ``ValueError``
            (422 with its message) for input it refuses; anything else is a 500 whose
            traceback is logged, never sent. Called from worker threads, possibly
            concurrently: it must be thread-safe.
        health: Returns a report with ``"status"`` in ``ok``/``degraded``/``unavailable``
            (plus anything JSON-encodable); sent as is, 200 unless unavailable.
        metrics: Where decisions, latency and requests are counted; ``/metrics``
            exposes it.
        token: The bearer token callers must present (from the environment at the entry
            point); None refuses every protected request.
        max_services: Most services per request (more is a 422).
        max_body_bytes: Largest request body (more is a 413, refused before parsing).
        clock: Server time (aware, or naive UTC) used to refuse a ``ts`` more than
            :data:`MAX_FUTURE` ahead; injectable for tests.

    Returns:
        The app; serve it with any ASGI server.

    Raises:
        ValueError: If a limit is below 1.
    """
    if max_services < 1:
        raise ValueError(f"max_services must be >= 1, got {max_services}")
    if max_body_bytes < 1:
        raise ValueError(f"max_body_bytes must be >= 1, got {max_body_bytes}")
    handler = _DecisionHandler(
        decide=decide, metrics=metrics, max_services=max_services, clock=clock
    )
    app = FastAPI(
        title="Predictive auto-scaler",
        summary="Scaling decisions per service from its recent traffic and state.",
        version="1",
    )
    error_responses: dict[int | str, dict[str, Any]] = {
        code: {"model": ErrorBody, "description": HTTPStatus(code).phrase}
        for code in (400, 401, 413, 415, 422, 500, 503)
    }

    @app.post(
        "/v1/decisions",
        response_model=None,
        responses={200: {"model": DecisionResponse}, **error_responses},
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": _request_schema(max_services)}},
            }
        },
    )
    async def post_decisions(request: Request) -> Response:
        """Decide the job count of each service in the body."""
        # Before anything is read: an unauthorized caller gets no work done, however large.
        _authorize(request, token)
        _check_json_content_type(request)
        body = await _read_body(request, max_body_bytes)
        return await run_in_threadpool(handler, body)

    @app.get("/healthz", response_model=None, responses={503: {"model": ErrorBody}})
    def get_healthz(request: Request) -> Response:
        """The engine's health: 200 when it can decide, 503 when it cannot."""
        try:
            report = health()
        except Exception:
            logger.exception("health check failed")
            return _error_response(503, "not_ready", "health check failed; see the server log")
        code = 200 if report.get("status") in ("ok", "degraded") else 503
        if not _authorized(request, token):
            # Model versions and error texts are for authorized callers only.
            report = {"status": report.get("status")}
        return JSONResponse(jsonable_encoder(report), status_code=code)

    @app.get("/metrics", response_model=None)
    def get_metrics(request: Request) -> Response:
        """Prometheus exposition of the serving metrics."""
        _authorize(request, token)
        return Response(metrics.exposition(), media_type=metrics.content_type)

    @app.exception_handler(ApiError)
    async def on_api_error(request: Request, exc: ApiError) -> Response:
        response = _error_response(exc.status, exc.kind, exc.detail, input_kind=exc.input_kind)
        if exc.status == 401:
            response.headers["WWW-Authenticate"] = "Bearer"
        return response

    @app.exception_handler(StarletteHTTPException)
    async def on_http_error(request: Request, exc: StarletteHTTPException) -> Response:
        # 404/405 and friends in the same shape as our own errors.
        kind = HTTPStatus(exc.status_code).phrase.lower().replace(" ", "_")
        response = _error_response(exc.status_code, kind, str(exc.detail))
        response.headers.update(exc.headers or {})
        return response

    app.add_middleware(
        _RequestCounter,
        metrics=metrics,
        endpoints=frozenset({"/v1/decisions", "/healthz", "/metrics"}),
    )
    return app


__all__ = [
    "DECISION_FIELDS",
    "DEFAULT_MAX_BODY_BYTES",
    "DEFAULT_MAX_SERVICES",
    "OPTIONAL_FIELDS",
    "PROFILE_FIELDS",
    "REQUEST_FIELDS",
    "STATE_FIELDS",
    "ApiError",
    "Decision",
    "DecisionRequest",
    "DecisionResponse",
    "ErrorBody",
    "NotReady",
    "ServiceFeatures",
    "ServiceProfile",
    "ServiceState",
    "create_app",
    "request_frame",
]
