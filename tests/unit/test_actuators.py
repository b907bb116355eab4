"""Actuators without a platform: the retry helper, the dry run, target checks, error reading."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pytest
import urllib3.exceptions
from kubernetes.client.exceptions import ApiException

from serving.actuators.base import Actuation, ActuatorError, validate_targets
from serving.actuators.dry_run import DryRunActuator
from serving.actuators.kubernetes import (
    KubernetesActuator,
    KubernetesOptions,
    describe_error,
    is_transient,
    retry_after_s,
)
from serving.actuators.retry import Attempted, RetriesExhausted, RetryPolicy, call_with_retry


class Transient(Exception):
    """Stands for an error worth retrying."""


class Permanent(Exception):
    """Stands for an error no retry gets past."""


class Script:
    """A call that raises the scripted errors in turn, then returns ``value``."""

    def __init__(self, *errors: Exception, value: str = "ok") -> None:
        self.errors = list(errors)
        self.value = value
        self.calls = 0

    def __call__(self) -> str:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return self.value


def _retry(call: Script, sleeps: list[float], **kwargs: Any) -> Attempted[str]:
    policy = kwargs.pop("policy", RetryPolicy(max_attempts=4, delays_s=(0.1, 0.5, 2.0)))
    return call_with_retry(
        call, transient=(Transient,), policy=policy, sleep=sleeps.append, **kwargs
    )


# --- retry helper ---------------------------------------------------------------------


def test_transient_errors_are_retried_until_success() -> None:
    call = Script(Transient(), Transient())
    sleeps: list[float] = []

    result = _retry(call, sleeps)

    assert result == Attempted(value="ok", attempts=3)
    assert sleeps == [0.1, 0.5]


def test_gives_up_after_max_attempts_with_the_last_error() -> None:
    last = Transient("fourth")
    call = Script(Transient(), Transient(), Transient(), last)
    sleeps: list[float] = []

    with pytest.raises(RetriesExhausted) as raised:
        _retry(call, sleeps)

    assert (raised.value.attempts, call.calls) == (4, 4)
    assert raised.value.last_error is last and raised.value.__cause__ is last
    assert "gave up after 4 attempt(s): fourth" in str(raised.value)
    assert sleeps == [0.1, 0.5, 2.0]


def test_non_transient_error_propagates_at_once() -> None:
    error = Permanent("no")
    call = Script(Transient(), error)
    sleeps: list[float] = []

    with pytest.raises(Permanent) as raised:
        _retry(call, sleeps)

    assert raised.value is error
    assert call.calls == 2 and sleeps == [0.1]


def test_predicate_decides_what_is_transient() -> None:
    call = Script(ValueError("retry me"), value="done")
    sleeps: list[float] = []

    result = call_with_retry(
        call,
        transient=lambda error: "retry" in str(error),
        policy=RetryPolicy(max_attempts=2, delays_s=(0.0,)),
        sleep=sleeps.append,
    )

    assert result == Attempted(value="done", attempts=2)


def test_last_delay_repeats_and_is_capped() -> None:
    policy = RetryPolicy(max_attempts=6, delays_s=(1.0, 8.0), max_delay_s=5.0)

    assert [policy.delay_before(attempt) for attempt in range(2, 7)] == [1.0, 5.0, 5.0, 5.0, 5.0]


def test_retry_after_hint_lengthens_the_wait_up_to_the_cap() -> None:
    policy = RetryPolicy(max_attempts=3, delays_s=(0.1,), max_delay_s=3.0)
    call = Script(Transient("2"), Transient("60"))
    sleeps: list[float] = []

    _retry(call, sleeps, policy=policy, retry_after=lambda error: float(str(error)))

    assert sleeps == [2.0, 3.0]


def test_deadline_stops_retrying_instead_of_sleeping_past_it() -> None:
    call = Script(Transient(), Transient())
    sleeps: list[float] = []

    with pytest.raises(RetriesExhausted) as raised:
        _retry(call, sleeps, clock=lambda: 100.0, deadline=100.3)

    # The first wait (0.1 s) fits before the deadline, the second (0.5 s) does not.
    assert raised.value.attempts == 2 and sleeps == [0.1]


def test_one_attempt_means_no_retry() -> None:
    call = Script(Transient())
    sleeps: list[float] = []

    with pytest.raises(RetriesExhausted):
        _retry(call, sleeps, policy=RetryPolicy(max_attempts=1))

    assert call.calls == 1 and sleeps == []


@pytest.mark.parametrize(
    "kwargs",
    [{"max_attempts": 0}, {"delays_s": ()}, {"delays_s": (1.0, -1.0)}, {"max_delay_s": -1.0}],
)
def test_retry_policy_rejects_nonsense(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        RetryPolicy(**kwargs)


# --- targets --------------------------------------------------------------------------


def test_validate_targets_accepts_integers_of_any_type() -> None:
    checked = validate_targets({"a": 0, "b": np.int64(3)})

    assert checked == {"a": 0, "b": 3}
    assert all(type(value) is int for value in checked.values())


@pytest.mark.parametrize(
    ("targets", "message"),
    [
        ({"a": -1}, "a: target -1 is negative"),
        ({"a": 2.0}, "a: target 2.0 is not an integer"),
        ({"a": 2.5}, "a: target 2.5 is not an integer"),
        ({"a": True}, "a: target True is not an integer"),
        ({"a": "3"}, "a: target '3' is not an integer"),
        ({"a": None}, "a: target None is not an integer"),
        ({"": 1}, "service id '' is not a non-empty string"),
    ],
)
def test_validate_targets_rejects_bad_targets(targets: dict[Any, Any], message: str) -> None:
    with pytest.raises(ValueError, match="nothing applied") as raised:
        validate_targets({"ok": 1, **targets})

    assert message in str(raised.value)


# --- dry run --------------------------------------------------------------------------


def test_dry_run_records_logs_and_applies_nothing(caplog: pytest.LogCaptureFixture) -> None:
    actuator = DryRunActuator(initial={"web": 2})

    with caplog.at_level(logging.INFO, logger="serving.actuators.dry_run"):
        results = actuator.apply({"web": 5, "new": 1})

    assert actuator.name == "dry-run"
    assert results == [
        Actuation("web", 5, applied=False, previous=2, attempts=0, error=None),
        Actuation("new", 1, applied=False, previous=None, attempts=0, error=None),
    ]
    assert actuator.current(["web", "new", "other"]) == {"web": 5, "new": 1, "other": None}
    assert [record.getMessage() for record in caplog.records] == [
        "dry-run: web would go from 2 to 5 jobs (not applied)",
        "dry-run: new would go from unknown to 1 jobs (not applied)",
    ]


def test_dry_run_previous_is_the_last_target() -> None:
    actuator = DryRunActuator()

    actuator.apply({"web": 3})
    (second,) = actuator.apply({"web": 4})

    assert (second.previous, second.target) == (3, 4)


def test_dry_run_rejects_bad_targets_and_records_none_of_them() -> None:
    actuator = DryRunActuator(initial={"web": 2})

    with pytest.raises(ValueError):
        actuator.apply({"web": 4, "api": -1})

    assert actuator.current(["web", "api"]) == {"web": 2, "api": None}


def test_dry_run_uses_the_injected_logger(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("test.shadow")

    with caplog.at_level(logging.INFO, logger="test.shadow"):
        DryRunActuator(logger=logger).apply({"web": 1})

    assert [record.name for record in caplog.records] == ["test.shadow"]


# --- Kubernetes: options and error reading (no server) --------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"namespace": "Prod"},
        {"namespace": "a_b"},
        {"deployments": {"svc": "Bad_Name"}},
        {"name_template": "{service}"},
        {"name_template": "{0}"},
        {"request_timeout_s": 0.0},
        {"apply_budget_s": 0.0},
        {"field_manager": ""},
    ],
)
def test_kubernetes_options_reject_what_the_api_would(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        KubernetesOptions(**kwargs)


def _api_error(status: int, body: str | None = None, **headers: str) -> ApiException:
    error = ApiException(status=status, reason="Reason")
    error.body = body
    error.headers = headers
    return error


@pytest.mark.parametrize(
    ("error", "transient"),
    [
        (_api_error(429), True),
        (_api_error(500), True),
        (_api_error(502), True),
        (_api_error(503), True),
        (_api_error(504), True),
        (_api_error(400), False),
        (_api_error(401), False),
        (_api_error(403), False),
        (_api_error(404), False),
        (_api_error(409), False),
        (_api_error(422), False),
        (_api_error(0), False),
        (urllib3.exceptions.ReadTimeoutError(None, "/", "read timed out"), True),  # type: ignore[arg-type]
        (urllib3.exceptions.NewConnectionError(None, "refused"), True),  # type: ignore[arg-type]
        (urllib3.exceptions.ProtocolError("connection reset"), True),
        (urllib3.exceptions.MaxRetryError(None, "/", OSError("refused")), True),  # type: ignore[arg-type]
        (urllib3.exceptions.SSLError("bad certificate"), False),
        (
            urllib3.exceptions.MaxRetryError(None, "/", urllib3.exceptions.SSLError("bad")),  # type: ignore[arg-type]
            False,
        ),
        (ConnectionResetError(), True),
        (TimeoutError(), True),
        (ValueError("bug"), False),
    ],
)
def test_is_transient(error: BaseException, transient: bool) -> None:
    assert is_transient(error) is transient


def test_retry_after_reads_seconds_only() -> None:
    assert retry_after_s(_api_error(429, **{"Retry-After": "2"})) == 2.0
    assert (
        retry_after_s(_api_error(429, **{"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"})) is None
    )
    assert retry_after_s(_api_error(503)) is None
    assert retry_after_s(ValueError()) is None


def test_describe_error_gives_status_and_server_message() -> None:
    body = '{"kind": "Status", "message": "deployments.apps \\"web\\" is forbidden", "code": 403}'

    assert describe_error(_api_error(403, body)) == (
        'HTTP 403 Reason: deployments.apps "web" is forbidden'
    )
    assert describe_error(_api_error(502, "<html>bad gateway</html>")) == "HTTP 502 Reason"
    assert describe_error(RetriesExhausted(3, _api_error(503))) == (
        "gave up after 3 attempt(s): HTTP 503 Reason"
    )
    assert describe_error(ValueError("bug")) == "ValueError: bug"


def test_deployment_names_come_from_the_map_then_the_template() -> None:
    from kubernetes.client import ApiClient, Configuration

    options = KubernetesOptions(
        namespace="prod", deployments={"checkout": "shop-v2"}, name_template="{service_id}-worker"
    )
    # No request is made: naming needs no server.
    actuator = KubernetesActuator(ApiClient(Configuration(host="http://127.0.0.1:9")), options)

    assert actuator.name == "kubernetes"
    assert actuator.deployment_for("checkout") == "shop-v2"
    assert actuator.deployment_for("payments") == "payments-worker"
    with pytest.raises(ActuatorError, match="not a valid Deployment name"):
        actuator.deployment_for("Payments_API")
    with pytest.raises(ActuatorError, match="not a valid Deployment name"):
        actuator.apply({"payments": 1, "Payments_API": 1})
