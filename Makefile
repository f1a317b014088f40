# Two commands for a newcomer: `make run` and `make test`. Everything else is optional.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check -q

.PHONY: run test test-mongomock test-secantus lint e2e compose-e2e bench bench-scale clean

$(VENV)/.runtime: requirements.txt requirements-embedded.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -r requirements.txt -r requirements-embedded.txt
	$(PIP) install --no-deps -e .
	touch $@

# The Python SDK (clients/python) too, editable: its tests and mypy run in this suite.
$(VENV)/.dev: requirements-dev.txt requirements-mock.txt clients/python/pyproject.toml $(VENV)/.runtime
	$(PIP) install -r requirements-dev.txt
	$(PIP) install -e clients/python
	touch $@

## Start the server on the embedded database (data in ./var/db); Ctrl-C stops both.
run: $(VENV)/.runtime
	$(PY) -m service serve

## Lint, then the whole suite on mongomock and on a real wire-protocol server.
test: lint test-mongomock test-secantus

lint: $(VENV)/.dev
	$(VENV)/bin/ruff check service tests ops clients
	$(VENV)/bin/ruff format --check service tests ops clients
	$(VENV)/bin/mypy
	$(VENV)/bin/mypy --strict --config-file clients/python/pyproject.toml clients/python/src clients/python/examples clients/python/tools
	$(VENV)/bin/lint-imports
	$(VENV)/bin/bandit -q -r service
	$(VENV)/bin/hadolint ops/Dockerfile ops/podman/*.Containerfile
	$(VENV)/bin/check-jsonschema --builtin-schema vendor.compose-spec docker-compose.yml

test-mongomock: $(VENV)/.dev
	$(PY) -m pytest --backend=mongomock

test-secantus: $(VENV)/.dev
	$(PY) -m pytest --backend=secantus

## Black-box checks against a live server: Swagger UI in headless Chromium (Debian's /usr/bin/chromium).
e2e: $(VENV)/.dev
	@test -x "$${CHROMIUM:-/usr/bin/chromium}" || { echo "e2e needs Chromium: apt-get install chromium" >&2; exit 1; }
	$(PY) -m pytest -m e2e --backend=secantus tests/e2e -rA

## The real docker-compose.yml started (three API replicas behind nginx) and driven from outside:
## `docker compose` where a Docker engine runs, else podman (installed with apt when missing, as root).
compose-e2e: $(VENV)/.dev
	$(PY) ops/compose_e2e.py

## Load benchmark against the bare aiohttp ceiling (needs wrk: apt-get install wrk); prints a table, writes var/bench/results.json.
bench: $(VENV)/.dev
	@command -v wrk >/dev/null || { echo "bench needs wrk: apt-get install wrk" >&2; exit 1; }
	$(PY) ops/bench/run.py
	$(PY) ops/bench/drivers.py

## Costs at scale (10k users, 1k teams, a team of 5,000) and database operations per request; prints a table.
bench-scale: $(VENV)/.dev
	$(PY) ops/bench/scale.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache .hypothesis .schemathesis .coverage htmlcov test-output var
