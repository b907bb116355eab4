"""Kubernetes actuator: set each service's Deployment replicas through the scale subresource.

Each service maps to one Deployment in one namespace. For every target the actuator
reads ``GET /apis/apps/v1/namespaces/{ns}/deployments/{name}/scale`` and, only when
``spec.replicas`` differs, sends ``PATCH .../scale`` with the merge patch
``{"spec": {"replicas": n}}`` (``application/merge-patch+json``, as ``kubectl scale``
sends). Targets, never deltas: applying the same decision twice makes one PATCH, and a
retried PATCH cannot overshoot.

Graceful on scale-down: the actuator only ever writes the replica count of the scale
subresource. It never deletes pods itself; the Deployment controller picks the pods to
remove and Kubernetes terminates them with their ``terminationGracePeriodSeconds`` and
``preStop`` hooks, so a consumer can finish or hand back its in-flight events. How far
and how often it scales down is the safety shield's job upstream (step limit N and the
scale-down cooldown), not this module's.

Errors: HTTP 429, 500, 502, 503 and 504, connection failures and timeouts are
transient and retried with back-off (a ``Retry-After`` hint is honoured up to the
policy's longest wait); every other HTTP status (403, 404, 409, 422, ...) is reported at
once. Each request has its own timeout, and one ``apply`` has a time budget, so a sick
API server cannot stall the once-a-minute decision cycle. One service's failure is
reported in its :class:`Actuation` and never stops the others.

Do not point this actuator and a HorizontalPodAutoscaler at the same Deployment: both
write ``spec.replicas`` and would overwrite each other every cycle.

The ``kubernetes`` client (about 0.7 s to import) is imported inside the functions that
use it, so importing this module, and the CLI, stays fast.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, TypeVar

from serving.actuators.base import Actuation, ActuatorError, validate_targets
from serving.actuators.retry import (
    Attempted,
    RetriesExhausted,
    RetryPolicy,
    call_with_retry,
)

if TYPE_CHECKING:
    from kubernetes.client import ApiClient, AppsV1Api, Configuration, V1Scale

T = TypeVar("T")

TRANSIENT_STATUSES = frozenset({429, 500, 502, 503, 504})
"""HTTP statuses that a later identical request may get past (overload, restarts)."""

MERGE_PATCH = "application/merge-patch+json"
"""Content type of the PATCH. Sent explicitly: left to itself the client picks
``application/strategic-merge-patch+json`` for a dict body, which is fine for a Scale
today but is a choice of the client's, not ours."""

USER_AGENT = "predictive-autoscaler"
"""User agent of the clients built here, so API-server audit logs name who scaled."""

# DNS-1123 subdomain (Deployment names) and label (namespaces); the API server rejects
# anything else, so a bad name is caught as configuration before any request.
_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")


def _is_subdomain(name: str) -> bool:
    """Whether ``name`` is a valid Deployment name (DNS-1123 subdomain, <= 253 chars)."""
    return len(name) <= 253 and _SUBDOMAIN.fullmatch(name) is not None


@dataclass(frozen=True)
class KubernetesOptions:
    """Where each service's Deployment is and how patiently to talk to the API server.

    Attributes:
        namespace: Namespace of the Deployments.
        deployments: Deployment name per service id, for services whose name differs.
        name_template: Deployment name of the other services, ``{service_id}``
            substituted; None to accept only the services in ``deployments``.
        request_timeout_s: Timeout of each HTTP request (connect and read together).
        retry: Attempts and back-off for transient errors, per request.
        apply_budget_s: Seconds one ``apply`` or ``current`` may spend; services not
            reached by then are reported as not attempted. None for no budget.
        field_manager: Recorded in the Deployment's managedFields as the writer of
            ``spec.replicas``.
    """

    namespace: str = "default"
    deployments: Mapping[str, str] = field(default_factory=dict)
    name_template: str | None = "{service_id}"
    request_timeout_s: float = 10.0
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    apply_budget_s: float | None = 45.0
    field_manager: str = USER_AGENT

    def __post_init__(self) -> None:
        """Reject options the API server would refuse, saying what to change."""
        if _LABEL.fullmatch(self.namespace) is None or len(self.namespace) > 63:
            raise ValueError(f"namespace {self.namespace!r} is not a DNS-1123 label")
        bad = [name for name in self.deployments.values() if not _is_subdomain(name)]
        if bad:
            raise ValueError(f"deployment names {bad} are not DNS-1123 subdomains")
        if self.name_template is not None:
            try:
                self.name_template.format(service_id="x")
            except (KeyError, IndexError, ValueError) as error:
                raise ValueError(
                    f"name_template {self.name_template!r} may use only {{service_id}}: {error}"
                ) from error
        if self.request_timeout_s <= 0:
            raise ValueError(f"request_timeout_s must be > 0, got {self.request_timeout_s}")
        if self.apply_budget_s is not None and self.apply_budget_s <= 0:
            raise ValueError(f"apply_budget_s must be > 0 or None, got {self.apply_budget_s}")
        if not self.field_manager or len(self.field_manager) > 128:
            raise ValueError("field_manager must be 1 to 128 characters")


def is_transient(error: BaseException) -> bool:
    """Whether a failed Kubernetes request is worth sending again unchanged.

    Args:
        error: What the client raised.

    Returns:
        True for HTTP 429/500/502/503/504, connection failures and timeouts; False for
        every other status, TLS errors (a bad certificate stays bad) and anything else.
    """
    import urllib3.exceptions
    from kubernetes.client.exceptions import ApiException

    if isinstance(error, ApiException):
        # Status 0 is the client's own wrapper for TLS errors and unsendable bodies.
        return error.status in TRANSIENT_STATUSES
    if isinstance(error, urllib3.exceptions.SSLError):
        return False
    if isinstance(error, urllib3.exceptions.MaxRetryError):
        return not isinstance(error.reason, urllib3.exceptions.SSLError)
    return isinstance(
        error,
        (
            urllib3.exceptions.TimeoutError,  # connect and read timeouts, refused connections
            urllib3.exceptions.ProtocolError,  # connection reset or closed mid-response
            ConnectionError,
            TimeoutError,
        ),
    )


def retry_after_s(error: BaseException) -> float | None:
    """The server's ``Retry-After`` hint in seconds (API Priority and Fairness sends one).

    Args:
        error: What the client raised.

    Returns:
        The hint, or None when there is none or it is not a number of seconds.
    """
    headers = getattr(error, "headers", None)
    if not headers:
        return None
    value = headers.get("Retry-After")
    try:
        return max(float(value), 0.0) if value is not None else None
    except ValueError:
        return None


def describe_error(error: BaseException) -> str:
    """A one-line account of a failed request: HTTP status and the server's message.

    Args:
        error: What the client or the retry helper raised.

    Returns:
        E.g. ``HTTP 404 Not Found: deployments.apps "web" not found``.
    """
    from kubernetes.client.exceptions import ApiException

    if isinstance(error, RetriesExhausted):
        return f"gave up after {error.attempts} attempt(s): {describe_error(error.last_error)}"
    if isinstance(error, ApiException):
        if not error.status:
            return f"request failed before any HTTP status: {error.reason}"
        text = f"HTTP {error.status} {error.reason or ''}".rstrip()
        message = _status_message(error.body)
        return f"{text}: {message}" if message else text
    return f"{type(error).__name__}: {error}"


def _status_message(body: Any) -> str | None:
    """The ``message`` of a Kubernetes ``Status`` error body, if the body is one."""
    if not isinstance(body, str | bytes):
        return None
    try:
        parsed = json.loads(body)
    except ValueError:
        return None
    message = parsed.get("message") if isinstance(parsed, dict) else None
    return str(message)[:300] if message else None


def _replicas(scale: V1Scale) -> int:
    """``spec.replicas`` of a Scale; the API omits it when it is 0 (``omitempty``)."""
    if scale.spec is None or scale.spec.replicas is None:
        return 0
    return int(scale.spec.replicas)


class KubernetesActuator:
    """Sets Deployment replicas through the scale subresource, one result per service.

    ``current`` reads ``spec.replicas`` (the desired count, not the pods running now).
    ``apply`` reads first and PATCHes only when the count differs. An :class:`Actuation`
    says ``applied=True`` when the Deployment's ``spec.replicas`` equals the target
    afterwards (``attempts=0`` when it already did), ``attempts`` counts PATCH requests,
    and ``error`` names the deployment, namespace and HTTP status when it failed.

    Args:
        api_client: A configured ``kubernetes.client.ApiClient``; its own settings
            (urllib3 retries, proxy, TLS) are used as they are.
        options: Namespace, deployment names, timeouts and retries.
        sleep: Waits between retries (injected so tests do not wait).
        clock: Monotonic seconds, for the apply budget.
        logger: Where failures and changes are logged; default this module's logger.
    """

    name = "kubernetes"

    def __init__(
        self,
        api_client: ApiClient,
        options: KubernetesOptions | None = None,
        *,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        logger: logging.Logger | None = None,
    ) -> None:
        from kubernetes.client import AppsV1Api

        self.options = options if options is not None else KubernetesOptions()
        self._api_client = api_client
        self._apps: AppsV1Api = AppsV1Api(api_client)
        self._sleep = sleep
        self._clock = clock
        self._logger = logger if logger is not None else logging.getLogger(__name__)

    @classmethod
    def from_host(
        cls,
        host: str,
        options: KubernetesOptions | None = None,
        *,
        token_env: str | None = None,
        environ: Mapping[str, str] | None = None,
        verify_ssl: bool = True,
        ssl_ca_cert: str | None = None,
    ) -> KubernetesActuator:
        """An actuator for an API server URL, with a bearer token from the environment.

        Args:
            host: API server URL, e.g. ``https://10.0.0.1:6443``.
            options: Namespace, deployment names, timeouts and retries.
            token_env: Name of the environment variable holding the bearer token (the
                token itself never goes through settings or logs); None for no token.
            environ: Where to look the variable up; default ``os.environ``.
            verify_ssl: Verify the server's TLS certificate (leave on outside labs).
            ssl_ca_cert: CA bundle file for the server's certificate.

        Returns:
            The actuator.

        Raises:
            ActuatorError: If ``token_env`` is given but unset or empty.
        """
        from kubernetes.client import Configuration

        configuration = Configuration(host=host, verify_ssl=verify_ssl, ssl_ca_cert=ssl_ca_cert)
        if token_env is not None:
            token = (environ if environ is not None else os.environ).get(token_env, "")
            if not token:
                raise ActuatorError(
                    f"environment variable {token_env} holds no Kubernetes bearer token"
                )
            configuration.api_key = {"BearerToken": token}
            configuration.api_key_prefix = {"BearerToken": "Bearer"}
        return cls(_client_for(configuration), options)

    @classmethod
    def from_kubeconfig(
        cls,
        options: KubernetesOptions | None = None,
        *,
        config_file: str | None = None,
        context: str | None = None,
    ) -> KubernetesActuator:
        """An actuator using a kubeconfig file (for running outside the cluster).

        Args:
            options: Namespace, deployment names, timeouts and retries.
            config_file: The kubeconfig; default ``$KUBECONFIG`` or ``~/.kube/config``.
            context: The context to use; default the file's current context.

        Returns:
            The actuator.
        """
        from kubernetes import config
        from kubernetes.client import Configuration

        configuration = Configuration()
        # persist_config=False: refreshing a token must never rewrite the user's kubeconfig.
        config.load_kube_config(
            config_file=config_file,
            context=context,
            client_configuration=configuration,
            persist_config=False,
        )
        return cls(_client_for(configuration), options)

    @classmethod
    def in_cluster(cls, options: KubernetesOptions | None = None) -> KubernetesActuator:
        """An actuator using the pod's service account (for running inside the cluster).

        The service account needs ``get`` and ``patch`` on ``deployments/scale`` in the
        namespace, nothing more. Its projected token rotates; the client rereads it.

        Args:
            options: Namespace, deployment names, timeouts and retries.

        Returns:
            The actuator.
        """
        from kubernetes import config
        from kubernetes.client import Configuration

        configuration = Configuration()
        config.load_incluster_config(client_configuration=configuration, try_refresh_token=True)
        return cls(_client_for(configuration), options)

    @classmethod
    def from_environment(
        cls,
        options: KubernetesOptions | None = None,
        *,
        namespace: str | None = None,
        config_file: str | None = None,
        context: str | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> KubernetesActuator:
        """The pod's service account inside a cluster, else the kubeconfig, as kubectl does.

        Args:
            options: Namespace, deployment names, timeouts and retries.
            namespace: Replaces ``options.namespace`` when given.
            config_file: The kubeconfig outside a cluster (default as kubectl).
            context: The kubeconfig context outside a cluster.
            environ: Where ``KUBERNETES_SERVICE_HOST`` is looked up; default ``os.environ``.

        Returns:
            The actuator.
        """
        options = options if options is not None else KubernetesOptions()
        if namespace is not None:
            options = replace(options, namespace=namespace)
        # Kubernetes sets this variable in every pod; its presence means "in a cluster".
        if (environ if environ is not None else os.environ).get("KUBERNETES_SERVICE_HOST"):
            return cls.in_cluster(options)
        return cls.from_kubeconfig(options, config_file=config_file, context=context)

    def close(self) -> None:
        """Close the client's connection pool."""
        self._api_client.close()

    def deployment_for(self, service_id: str) -> str:
        """The Deployment a service is scaled through.

        Args:
            service_id: The service.

        Returns:
            The Deployment name in ``options.namespace``.

        Raises:
            ActuatorError: If the service has no Deployment, or its name is invalid.
        """
        name = self.options.deployments.get(service_id)
        if name is None:
            if self.options.name_template is None:
                raise ActuatorError(
                    f"no Deployment configured for service {service_id!r} "
                    "(add it to deployments or set name_template)"
                )
            name = self.options.name_template.format(service_id=service_id)
            if not _is_subdomain(name):
                raise ActuatorError(
                    f"service {service_id!r} maps to {name!r}, not a valid Deployment name; "
                    "map it in deployments"
                )
        return name

    def current(self, services: Sequence[str]) -> dict[str, int | None]:
        """Each service's Deployment ``spec.replicas``.

        Args:
            services: Service ids.

        Returns:
            The replica count per service; None where it could not be read (logged).

        Raises:
            ActuatorError: If a service has no valid Deployment name (before any request).
        """
        names = {service_id: self.deployment_for(service_id) for service_id in services}
        deadline = self._deadline()
        counts: dict[str, int | None] = {}
        for service_id, name in names.items():
            try:
                counts[service_id] = _replicas(self._read(name, deadline).value)
            except Exception as error:
                self._logger.warning(
                    "cannot read scale of %s: %s", self._where(name), describe_error(error)
                )
                counts[service_id] = None
        return counts

    def apply(self, targets: Mapping[str, int]) -> list[Actuation]:
        """Set each service's Deployment replicas to its target.

        Args:
            targets: Job target per service id.

        Returns:
            One :class:`Actuation` per service, in the order given.

        Raises:
            ValueError: If a target is negative or not an integer (before any request).
            ActuatorError: If a service has no valid Deployment name (before any request).
        """
        checked = validate_targets(targets)
        names = {service_id: self.deployment_for(service_id) for service_id in checked}
        deadline = self._deadline()
        results: list[Actuation] = []
        for service_id, target in checked.items():
            if deadline is not None and self._clock() >= deadline:
                results.append(
                    Actuation(
                        service_id=service_id,
                        target=target,
                        applied=False,
                        attempts=0,
                        error=f"{self._where(names[service_id])}: not attempted, apply "
                        f"budget of {self.options.apply_budget_s} s spent",
                    )
                )
                continue
            results.append(self._apply_one(service_id, names[service_id], target, deadline))
        for result in results:
            if result.error is not None:
                self._logger.warning("scaling %s failed: %s", result.service_id, result.error)
        return results

    def _apply_one(
        self, service_id: str, name: str, target: int, deadline: float | None
    ) -> Actuation:
        """Read one Deployment's scale and PATCH it when it differs from the target."""
        where = self._where(name)
        try:
            previous = _replicas(self._read(name, deadline).value)
        except Exception as error:
            return Actuation(
                service_id=service_id,
                target=target,
                applied=False,
                attempts=0,
                error=f"{where}: reading scale: {describe_error(error)}",
            )
        if previous == target:
            return Actuation(service_id, target, applied=True, previous=previous, attempts=0)

        patches = 0

        def patch() -> V1Scale:
            # Counted here, not from the retry helper's result, so a PATCH that fails
            # permanently after transient failures still reports every request made.
            nonlocal patches
            patches += 1
            return self._apps.patch_namespaced_deployment_scale(
                name,
                self.options.namespace,
                body={"spec": {"replicas": target}},
                field_manager=self.options.field_manager,
                _content_type=MERGE_PATCH,
                _request_timeout=self.options.request_timeout_s,
            )

        try:
            stored = _replicas(self._retry(patch, deadline).value)
        except Exception as error:
            return Actuation(
                service_id=service_id,
                target=target,
                applied=False,
                previous=previous,
                attempts=patches,
                error=f"{where}: scaling {previous} -> {target}: {describe_error(error)}",
            )
        if stored != target:
            # A mutating admission webhook or a replica limit can change what is stored.
            return Actuation(
                service_id=service_id,
                target=target,
                applied=False,
                previous=previous,
                attempts=patches,
                error=f"{where}: PATCH accepted but spec.replicas is {stored}, not {target}",
            )
        self._logger.info("scaled %s from %d to %d replicas", where, previous, target)
        return Actuation(service_id, target, applied=True, previous=previous, attempts=patches)

    def _read(self, name: str, deadline: float | None) -> Attempted[V1Scale]:
        """GET one Deployment's scale, retrying transient errors."""
        return self._retry(
            lambda: self._apps.read_namespaced_deployment_scale(
                name,
                self.options.namespace,
                _request_timeout=self.options.request_timeout_s,
            ),
            deadline,
        )

    def _retry(self, call: Callable[[], T], deadline: float | None) -> Attempted[T]:
        """Run one request under this actuator's retry policy and budget."""
        return call_with_retry(
            call,
            transient=is_transient,
            policy=self.options.retry,
            sleep=self._sleep,
            retry_after=retry_after_s,
            clock=self._clock,
            deadline=deadline,
        )

    def _deadline(self) -> float | None:
        """The clock value at which the current call's budget runs out."""
        budget = self.options.apply_budget_s
        return None if budget is None else self._clock() + budget

    def _where(self, name: str) -> str:
        """``deployment <namespace>/<name>``, as error messages and logs say it."""
        return f"deployment {self.options.namespace}/{name}"


def _client_for(configuration: Configuration) -> ApiClient:
    """An ``ApiClient`` whose only retries are this module's.

    urllib3 would otherwise retry refused connections three times on its own, without
    back-off, multiplying every attempt of the policy here by four.

    Args:
        configuration: Host, credentials and TLS settings.

    Returns:
        The client.
    """
    from kubernetes.client import ApiClient

    configuration.retries = False
    client = ApiClient(configuration)
    client.user_agent = USER_AGENT
    return client
