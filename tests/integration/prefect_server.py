"""A real ``prefect server start`` for the integration tests, stopped by its process id.

tests/integration/test_deployments.py runs its own (deploy, worker); on scaled-out engines
(scaled_out.py) the whole suite runs against one on PostgreSQL instead of the temporary one.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

STARTUP_TIMEOUT_S = 120


def prefect_executable() -> Path:
    """The ``prefect`` script of the environment running the tests."""
    return Path(sys.executable).with_name("prefect")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def stop(process: subprocess.Popen[bytes]) -> None:
    """Stop a process started in its own session, with its children (by its id)."""
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=15)


def tail(path: Path, chars: int = 4000) -> str:
    return path.read_text(errors="replace")[-chars:] if path.exists() else ""


def client_env(home: Path, url: str) -> dict[str, str]:
    """The environment of every subprocess: this process's, without the test harness's
    Prefect settings (conftest.py sets some) or any AUTOSCALER_* value, pointed at ``url``.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "AUTOSCALER_"))}
    env.update(
        PREFECT_HOME=str(home),
        PREFECT_API_URL=url,
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        GX_ANALYTICS_ENABLED="false",
        MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR="false",
    )
    return env


@contextmanager
def running_server(tmp: Path, database_url: str | None = None) -> Iterator[tuple[str, Path]]:
    """A Prefect server on a free port, healthy before this yields, stopped after.

    Args:
        tmp: Folder for its PREFECT_HOME (``home``) and its log (``server.log``).
        database_url: Its database (e.g. ``postgresql+asyncpg://...``); None for a SQLite
            file in its home.

    Yields:
        The API URL and the server's PREFECT_HOME.
    """
    home = tmp / "home"
    home.mkdir(parents=True, exist_ok=True)
    port = free_port()
    url = f"http://127.0.0.1:{port}/api"
    server_env = {
        **client_env(home, url),
        "PREFECT_API_DATABASE_CONNECTION_URL": database_url
        or f"sqlite+aiosqlite:///{home / 'prefect.db'}",
        "PREFECT_SERVER_UI_ENABLED": "false",
        # Only the runs the tests make may execute: no runs from deployment schedules.
        "PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED": "false",
    }
    log = tmp / "server.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [prefect_executable(), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            env=server_env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while True:
            assert process.poll() is None, f"the server exited:\n{tail(log)}"
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, f"no healthy server in time:\n{tail(log)}"
            time.sleep(0.5)
        yield url, home
    finally:
        stop(process)


def drain_client_workers() -> None:
    """Send the logs and events this process still has queued for the server, and wait.

    What ``prefect_test_harness`` does before it stops its server: without it, a server
    stopped by the tests leaves Prefect's log handler retrying at exit ("Error logging to
    API ... All connection attempts failed"), noise that hides real errors.
    """
    import inspect

    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker
    from prefect.utilities.asyncutils import run_coro_as_sync

    async def drain() -> None:
        try:
            result = APILogWorker.instance().drain()
            if inspect.isawaitable(result):
                await result
        except RuntimeError:  # never started: nothing was logged to the API
            pass
        result = EventsWorker.drain_all()
        if inspect.isawaitable(result):
            await result

    run_coro_as_sync(drain())
