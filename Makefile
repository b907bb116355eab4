# Set-up and everyday tasks. Every tool runs from .venv/bin; nothing needs activating.
#   make demo    set up .venv, then run the demo
#   make check   the loop to run while working: ruff, mypy and the unit tests not marked slow
#   make test    set up .venv, then ruff, mypy, bandit and every test (unit and integration,
#                slow included) on the embedded defaults
#   make test-scaled  the integration suite on Redis, PostgreSQL and a Prefect server on it
#                (.ci/services installs what is missing and starts them; stopped after)
#   make bench   control benchmark, JSON to .state/bench/control.json
#   make lock    re-resolve requirements.lock from pyproject.toml (keeps current pins;
#                upgrade one with: make lock UPGRADE="-P pyarrow", or all with UPGRADE=--upgrade)

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The stamp lives inside .venv so deleting .venv also forces a rebuild.
STAMP := $(VENV)/.installed
# pip-tools lives in its own venv: it is a lock-time tool, not a project dependency.
LOCK_VENV ?= .state/lock-venv
PIP_TOOLS_VERSION := 7.6.2
UPGRADE ?=
# The project's own code, as bandit scans it (tests use assert and subprocess by design).
PACKAGES := autoscaler simulator features models serving flows bench feature_repo
# pytest-xdist: one worker per core, at most 4 (each imports torch, Feast and MLflow and may
# start a Prefect server); PYTEST_WORKERS=0 runs in one process. With integration tests,
# `loadscope` keeps each module in one worker (tests/conftest.py); unit tests alone go out
# in batches (`load`: 94 s for make check's tests on 2 cores, against 115 s one by one).
PYTEST_WORKERS ?= auto
PYTEST := $(BIN)/pytest -q -n $(PYTEST_WORKERS) --maxprocesses 4

.PHONY: venv check test test-scaled demo bench lock clean

venv: $(STAMP)

# Re-run when the pins or the package metadata change; a new top-level __init__.py means a new
# package, which the editable install only maps on (re)install.
$(STAMP): requirements.lock pyproject.toml $(wildcard */__init__.py)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --disable-pip-version-check -q -r requirements.lock
	$(BIN)/pip install --disable-pip-version-check -q --no-deps -e .
	touch $@

check: venv
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(PYTEST) --dist load -m "not slow" tests/unit

test: venv
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/bandit -q --severity-level medium -r $(PACKAGES)
	$(PYTEST) --dist loadscope

# The services' settings (AUTOSCALER_ONLINE_STORE=redis, ...) reach pytest through the
# environment only, as they would reach a deployment. Their data is throwaway (a temp folder).
test-scaled: venv
	@services=$$(mktemp -d) && trap '.ci/services stop "$$services"; rm -rf "$$services"' EXIT \
		&& .ci/services start "$$services" \
		&& set -a && . "$$services/env" && set +a \
		&& $(PYTEST) --dist loadscope tests/integration

demo: venv
	$(BIN)/autoscaler demo

bench: venv
	$(BIN)/python -m bench.control --json .state/bench/control.json

$(LOCK_VENV)/bin/pip-compile:
	$(PYTHON) -m venv $(LOCK_VENV)
	$(LOCK_VENV)/bin/pip install --disable-pip-version-check -q pip-tools==$(PIP_TOOLS_VERSION)

# Index and find-links options (--no-emit-options) are left out so the lock names no machine-specific source.
lock: $(LOCK_VENV)/bin/pip-compile
	CUSTOM_COMPILE_COMMAND="make lock" $(LOCK_VENV)/bin/pip-compile --quiet --extra dev \
		--strip-extras --no-emit-options \
		--output-file requirements.lock $(UPGRADE) pyproject.toml
	# The resolver writes the local label of the CPU wheel it found here (torch==X+cpu); the plain
	# pin installs that same CPU build on these machines and stays installable elsewhere.
	sed -i -E 's/^(torch==[0-9.]+)\+cpu$$/\1/' requirements.lock

clean:
	rm -rf $(VENV) $(LOCK_VENV) build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache
	find . -name __pycache__ -type d -prune -not -path './.git/*' -exec rm -rf {} +

# Operating it on a Prefect server (README: "Operating it: Prefect server, deployments and the UIs"):
#   make server   Prefect server and UI on http://127.0.0.1:4200 (foreground; database in .state/prefect-server)
#   make deploy   the autoscaler-process work pool (if missing), then every deployment in prefect.yaml
#   make worker   a process worker for that pool (foreground)
# Run deploy and worker from this checkout. PREFECT_API_URL (environment or `make deploy
# PREFECT_API_URL=...`) names another server; AUTOSCALER_STATE_DIR at deploy time moves the state folder.
PREFECT_HOST ?= 127.0.0.1
PREFECT_PORT ?= 4200
PREFECT_API_URL ?= http://$(PREFECT_HOST):$(PREFECT_PORT)/api
PREFECT_SERVER_HOME ?= .state/prefect-server
WORK_POOL := autoscaler-process

.PHONY: server deploy worker

server: venv
	PREFECT_HOME=$(abspath $(PREFECT_SERVER_HOME)) PREFECT_SERVER_ANALYTICS_ENABLED=false \
		$(BIN)/prefect server start --host $(PREFECT_HOST) --port $(PREFECT_PORT)

deploy: venv
	PREFECT_API_URL=$(PREFECT_API_URL) $(BIN)/prefect work-pool inspect $(WORK_POOL) >/dev/null 2>&1 \
		|| PREFECT_API_URL=$(PREFECT_API_URL) $(BIN)/prefect work-pool create $(WORK_POOL) --type process
	PREFECT_API_URL=$(PREFECT_API_URL) $(BIN)/prefect --no-prompt deploy --all

worker: venv
	PREFECT_API_URL=$(PREFECT_API_URL) $(BIN)/prefect worker start --pool $(WORK_POOL)
