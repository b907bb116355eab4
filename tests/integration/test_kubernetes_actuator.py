"""The Kubernetes actuator against a local imitation of the API server's scale subresource.

The real ``kubernetes`` client talks HTTP to a server in a thread that answers
``GET``/``PATCH /apis/apps/v1/namespaces/{ns}/deployments/{name}/scale`` as the API
server does, and records every request, so the tests assert the exact requests sent.
"""

from __future__ import annotations

import json
import pathlib
import re
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from kubernetes.client import ApiClient, Configuration

from serving.actuators.base import Actuation, ActuatorError
from serving.actuators.kubernetes import KubernetesActuator, KubernetesOptions
from serving.actuators.retry import RetryPolicy

pytestmark = pytest.mark.integration

NAMESPACE = "prod"
TOKEN = "test-token-123"
TOKEN_ENV = "TEST_KUBE_TOKEN"
SCALE_PATH = re.compile(r"/apis/apps/v1/namespaces/([^/]+)/deployments/([^/]+)/scale")
# Tiny delays keep the retry tests fast; the schedule itself is tested in the unit tests.
FAST_RETRY = RetryPolicy(max_attempts=3, delays_s=(0.01,), max_delay_s=0.05)


@dataclass(frozen=True)
class Request:
    """One request as the fake API server received it."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: Any


@dataclass
class Reply:
    """A scripted answer that replaces the normal one, e.g. a 503 or a stall."""

    status: int
    headers: dict[str, str] = field(default_factory=dict)
    stall_s: float = 0.0


class FakeApiServer:
    """Deployments' scale subresource, as the API server serves it, plus a request log.

    Args:
        replicas: ``spec.replicas`` per (namespace, deployment) that exists.
    """

    def __init__(self, replicas: dict[tuple[str, str], int]) -> None:
        self.replicas = dict(replicas)
        self.requests: list[Request] = []
        # Scripted replies per (method, deployment name), used first in, first out.
        self.script: dict[tuple[str, str], list[Reply]] = {}
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        # A short poll interval: shutdown() waits up to one interval (default 0.5 s a test).
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True
        )

    @property
    def url(self) -> str:
        """Base URL of the server."""
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def start(self) -> None:
        """Serve in a background thread."""
        self._thread.start()

    def stop(self) -> None:
        """Stop serving and release the port."""
        self._httpd.shutdown()
        self._httpd.server_close()

    def then(self, method: str, name: str, *replies: Reply) -> None:
        """Answer the next requests of ``method`` on ``name`` with ``replies``, in order."""
        self.script.setdefault((method, name), []).extend(replies)

    def of(self, method: str) -> list[Request]:
        """The requests of one method, in arrival order."""
        return [request for request in self.requests if request.method == method]

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server._handle(self, "GET")

            def do_PATCH(self) -> None:
                server._handle(self, "PATCH")

            def log_message(self, format: str, *args: Any) -> None:
                """Keep the test output clean."""

        return Handler

    def _handle(self, handler: BaseHTTPRequestHandler, method: str) -> None:
        parts = urlsplit(handler.path)
        length = int(handler.headers.get("Content-Length") or 0)
        raw = handler.rfile.read(length) if length else b""
        request = Request(
            method=method,
            path=parts.path,
            query=parse_qs(parts.query),
            headers={key.lower(): value for key, value in handler.headers.items()},
            body=json.loads(raw) if raw else None,
        )
        with self._lock:
            self.requests.append(request)
        match = SCALE_PATH.fullmatch(parts.path)
        if match is None:
            self._send(handler, 404, _status(404, "NotFound", f"no route {parts.path}"))
            return
        namespace, name = match.groups()
        with self._lock:
            scripted = self.script.get((method, name))
            reply = scripted.pop(0) if scripted else None
        if reply is not None:
            time.sleep(reply.stall_s)
            if reply.status != 200:
                message = f"scripted {reply.status}"
                body = _status(reply.status, "Scripted", message)
                self._send(handler, reply.status, body, reply.headers)
                return
        key = (namespace, name)
        if key not in self.replicas:
            message = f'deployments.apps "{name}" not found'
            self._send(handler, 404, _status(404, "NotFound", message))
            return
        if method == "PATCH":
            if request.headers.get("content-type") != "application/merge-patch+json":
                self._send(handler, 415, _status(415, "UnsupportedMediaType", "bad type"))
                return
            self.replicas[key] = int(request.body["spec"]["replicas"])
        self._send(handler, 200, _scale(namespace, name, self.replicas[key]))

    @staticmethod
    def _send(
        handler: BaseHTTPRequestHandler,
        status: int,
        body: dict[str, Any],
        headers: dict[str, str] | None = None,
    ) -> None:
        data = json.dumps(body).encode()
        try:
            handler.send_response(status)
            handler.send_header("Content-Type", "application/json")
            handler.send_header("Content-Length", str(len(data)))
            for key, value in (headers or {}).items():
                handler.send_header(key, value)
            handler.end_headers()
            handler.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # The client gave up on a stalled reply (the timeout test).


def _scale(namespace: str, name: str, replicas: int) -> dict[str, Any]:
    """A Scale as the API server returns it; ``replicas`` is omitted when 0 (omitempty)."""
    spec = {"replicas": replicas} if replicas else {}
    return {
        "apiVersion": "autoscaling/v1",
        "kind": "Scale",
        "metadata": {"name": name, "namespace": namespace, "resourceVersion": "1"},
        "spec": spec,
        "status": {"replicas": replicas, "selector": f"app={name}"},
    }


def _status(code: int, reason: str, message: str) -> dict[str, Any]:
    """A Kubernetes ``Status`` error body."""
    return {
        "apiVersion": "v1",
        "kind": "Status",
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeApiServer]:
    """A fake API server with deployments web (2 replicas) and worker (5) in ``prod``."""
    # The client honours proxy variables; a proxy must not intercept 127.0.0.1.
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    fake = FakeApiServer({(NAMESPACE, "web"): 2, (NAMESPACE, "worker"): 5})
    fake.start()
    yield fake
    fake.stop()


def _actuator(server: FakeApiServer, **overrides: Any) -> KubernetesActuator:
    """An actuator built the production way, with a bearer token from the environment."""
    settings: dict[str, Any] = {
        "namespace": NAMESPACE,
        "request_timeout_s": 2.0,
        "retry": FAST_RETRY,
    }
    options = KubernetesOptions(**(settings | overrides))
    return KubernetesActuator.from_host(
        server.url, options, token_env=TOKEN_ENV, environ={TOKEN_ENV: TOKEN}
    )


def test_patch_is_a_merge_patch_of_replicas_on_the_scale_subresource(
    server: FakeApiServer,
) -> None:
    actuator = _actuator(server)

    results = actuator.apply({"web": 4})

    assert results == [Actuation("web", 4, applied=True, previous=2, attempts=1)]
    path = f"/apis/apps/v1/namespaces/{NAMESPACE}/deployments/web/scale"
    assert [(r.method, r.path) for r in server.requests] == [("GET", path), ("PATCH", path)]
    get, patch = server.requests
    assert get.body is None
    assert patch.body == {"spec": {"replicas": 4}}
    assert patch.headers["content-type"] == "application/merge-patch+json"
    assert patch.query == {"fieldManager": ["predictive-autoscaler"]}
    assert get.query == {}
    for request in server.requests:
        assert request.headers["authorization"] == f"Bearer {TOKEN}"
        assert request.headers["user-agent"] == "predictive-autoscaler"
    assert server.replicas[(NAMESPACE, "web")] == 4
    assert actuator.current(["web", "worker"]) == {"web": 4, "worker": 5}


def test_no_patch_when_replicas_already_match(server: FakeApiServer) -> None:
    results = _actuator(server).apply({"web": 2, "worker": 5})

    assert [(r.applied, r.previous, r.attempts) for r in results] == [(True, 2, 0), (True, 5, 0)]
    assert [r.method for r in server.requests] == ["GET", "GET"]


def test_same_targets_twice_make_one_patch(server: FakeApiServer) -> None:
    actuator = _actuator(server)

    first = actuator.apply({"web": 7})
    second = actuator.apply({"web": 7})

    assert (first[0].attempts, second[0].attempts) == (1, 0)
    assert second[0] == Actuation("web", 7, applied=True, previous=7, attempts=0)
    assert len(server.of("PATCH")) == 1


def test_scale_to_zero_and_back(server: FakeApiServer) -> None:
    actuator = _actuator(server)

    down = actuator.apply({"web": 0})
    # The API omits spec.replicas when it is 0; that reads as 0, not as unknown.
    assert actuator.current(["web"]) == {"web": 0}
    again = actuator.apply({"web": 0})
    up = actuator.apply({"web": 1})

    assert server.of("PATCH")[0].body == {"spec": {"replicas": 0}}
    assert (down[0].applied, again[0].attempts, up[0].previous) == (True, 0, 0)
    assert len(server.of("PATCH")) == 2


def test_transient_503_on_patch_is_retried_then_applied(server: FakeApiServer) -> None:
    server.then("PATCH", "web", Reply(503))

    results = _actuator(server).apply({"web": 3})

    assert results == [Actuation("web", 3, applied=True, previous=2, attempts=2)]
    assert [r.method for r in server.requests] == ["GET", "PATCH", "PATCH"]
    assert server.of("PATCH")[0].body == server.of("PATCH")[1].body == {"spec": {"replicas": 3}}


def test_429_on_read_is_retried(server: FakeApiServer) -> None:
    server.then("GET", "web", Reply(429, headers={"Retry-After": "0"}))

    results = _actuator(server).apply({"web": 3})

    assert results[0].applied and results[0].attempts == 1
    assert [r.method for r in server.requests] == ["GET", "GET", "PATCH"]


def test_gives_up_after_the_policy_attempts(server: FakeApiServer) -> None:
    server.then("PATCH", "web", *[Reply(503)] * 5)

    (result,) = _actuator(server).apply({"web": 3})

    assert not result.applied
    assert (result.previous, result.attempts) == (2, FAST_RETRY.max_attempts)
    assert result.error is not None
    assert f"deployment {NAMESPACE}/web" in result.error
    assert "gave up after 3 attempt(s): HTTP 503" in result.error
    assert len(server.of("PATCH")) == 3


@pytest.mark.parametrize("status", [400, 403, 404, 409, 422])
def test_client_errors_on_patch_are_not_retried(server: FakeApiServer, status: int) -> None:
    server.then("PATCH", "web", Reply(status))

    (result,) = _actuator(server).apply({"web": 3})

    assert (result.applied, result.attempts, result.previous) == (False, 1, 2)
    assert result.error is not None and f"HTTP {status}" in result.error
    assert len(server.of("PATCH")) == 1


def test_missing_deployment_is_reported_and_others_still_applied(
    server: FakeApiServer,
) -> None:
    results = _actuator(server).apply({"ghost": 3, "web": 6})

    ghost, web = results
    assert (ghost.service_id, ghost.applied, ghost.attempts) == ("ghost", False, 0)
    assert ghost.error == (
        f"deployment {NAMESPACE}/ghost: reading scale: "
        'HTTP 404 Not Found: deployments.apps "ghost" not found'
    )
    assert web == Actuation("web", 6, applied=True, previous=2, attempts=1)
    ghost_requests = [r for r in server.requests if "/ghost/" in r.path]
    assert [r.method for r in ghost_requests] == ["GET"]
    assert server.replicas[(NAMESPACE, "web")] == 6


def test_read_timeout_is_retried(server: FakeApiServer) -> None:
    # The first read stalls past the request timeout; the second is answered at once.
    server.then("GET", "web", Reply(200, stall_s=0.6))
    actuator = _actuator(server, request_timeout_s=0.2)

    started = time.monotonic()
    results = actuator.apply({"web": 3})

    assert results == [Actuation("web", 3, applied=True, previous=2, attempts=1)]
    assert time.monotonic() - started < 0.6
    assert [r.method for r in server.requests] == ["GET", "GET", "PATCH"]


def test_refused_connection_is_retried_then_reported() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    # Nothing listens on the port now, so every connection is refused.
    sleeps: list[float] = []
    options = KubernetesOptions(namespace=NAMESPACE, request_timeout_s=1.0, retry=FAST_RETRY)
    client = ApiClient(Configuration(host=f"http://127.0.0.1:{port}", retries=False))
    actuator = KubernetesActuator(client, options, sleep=sleeps.append)

    (result,) = actuator.apply({"web": 3})

    assert (result.applied, result.attempts) == (False, 0)
    assert result.error is not None
    assert result.error.startswith(f"deployment {NAMESPACE}/web: reading scale: gave up after 3")
    assert sleeps == [0.01, 0.01]
    assert actuator.current(["web"]) == {"web": None}


def test_apply_budget_skips_services_not_reached(server: FakeApiServer) -> None:
    # Each look at the clock advances it 30 s; the budget (45 s) runs out after one service.
    ticks = iter(range(0, 3000, 30))
    options = KubernetesOptions(namespace=NAMESPACE, retry=FAST_RETRY, apply_budget_s=45.0)
    client = ApiClient(Configuration(host=server.url))
    actuator = KubernetesActuator(client, options, clock=lambda: float(next(ticks)))

    web, worker = actuator.apply({"web": 3, "worker": 1})

    assert web.applied
    assert (worker.applied, worker.attempts) == (False, 0)
    assert worker.error is not None and "budget of 45.0 s spent" in worker.error
    assert all("/worker/" not in r.path for r in server.requests)


def test_mapped_deployment_names(server: FakeApiServer) -> None:
    actuator = _actuator(server, deployments={"svc-a": "worker"}, name_template=None)

    assert actuator.apply({"svc-a": 6})[0].previous == 5
    assert server.replicas[(NAMESPACE, "worker")] == 6
    with pytest.raises(ActuatorError, match="no Deployment configured for service 'web'"):
        actuator.apply({"svc-a": 1, "web": 1})
    assert len(server.requests) == 2


@pytest.mark.parametrize("targets", [{"web": -1}, {"web": 2.0}, {"web": True}])
def test_bad_targets_raise_before_any_request(
    server: FakeApiServer, targets: dict[str, Any]
) -> None:
    with pytest.raises(ValueError, match="nothing applied"):
        _actuator(server).apply({"worker": 1, **targets})
    assert server.requests == []


def test_missing_token_variable_is_a_configuration_error(server: FakeApiServer) -> None:
    with pytest.raises(ActuatorError, match=TOKEN_ENV):
        KubernetesActuator.from_host(server.url, token_env=TOKEN_ENV, environ={})


def test_kubeconfig_supplies_server_and_token(
    server: FakeApiServer, tmp_path: pathlib.Path
) -> None:
    kubeconfig = tmp_path / "config"
    kubeconfig.write_text(
        json.dumps(  # JSON is YAML, and a kubeconfig is read as YAML.
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "lab", "cluster": {"server": server.url}}],
                "users": [{"name": "bot", "user": {"token": TOKEN}}],
                "contexts": [{"name": "lab", "context": {"cluster": "lab", "user": "bot"}}],
                "current-context": "lab",
            }
        )
    )
    options = KubernetesOptions(retry=FAST_RETRY)

    # Outside a pod (no KUBERNETES_SERVICE_HOST), from_environment reads the kubeconfig.
    actuator = KubernetesActuator.from_environment(
        options, namespace=NAMESPACE, config_file=str(kubeconfig), environ={}
    )
    results = actuator.apply({"worker": 2})

    assert results == [Actuation("worker", 2, applied=True, previous=5, attempts=1)]
    assert [r.headers["authorization"] for r in server.requests] == [f"Bearer {TOKEN}"] * 2
    assert server.of("PATCH")[0].path == (
        f"/apis/apps/v1/namespaces/{NAMESPACE}/deployments/worker/scale"
    )
