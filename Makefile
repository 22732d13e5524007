# Relay: `make run` and `make test` set everything up themselves (uv from PyPI, the locked
# environment, Debian packages the tests need), then do their job.
SHELL := /bin/bash
PYTHON ?= python3.11
UV_VERSION := 0.13.9
TOOLS := .tools
UV := $(TOOLS)/bin/uv
VENV := .venv
PY := $(VENV)/bin/python
SAMPLE ?= samples/meeting.ogg
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: setup run test hosts-test hosts-deps lint typecheck bench bench-api bench-batch bench-bot bench-stack bench-intake bench-interactions bench-metrics discord-commands api bootstrap stack stack-down ui clean system-deps

$(UV):
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)

$(VENV)/.synced: pyproject.toml uv.lock | $(UV)
	$(UV) sync --frozen --python $(PYTHON)
	touch $@

setup: $(VENV)/.synced ## the locked Python environment

# Debian starts a package's service on install; Relay only wants the binaries (`make stack`
# runs its own Prometheus). A policy-rc.d that answers 101 forbids the start (left as it was
# when one exists: Docker images ship one); where systemd runs, the unit is then disabled.
NO_SERVICE := /usr/sbin/policy-rc.d

system-deps: hosts-deps ## Debian packages the tests use: espeak-ng (speech), prometheus (promtool, the stack's Prometheus), prometheus-alertmanager (amtool), the multi-host tests' (hosts-deps)
	@command -v espeak-ng >/dev/null || { $(SUDO) apt-get update -q && \
		$(SUDO) apt-get install -y -q --no-install-recommends espeak-ng; }
	@if ! command -v promtool >/dev/null || ! command -v amtool >/dev/null; then \
		made=; if [ ! -e $(NO_SERVICE) ]; then \
			printf '#!/bin/sh\nexit 101\n' | $(SUDO) tee $(NO_SERVICE) >/dev/null && \
			$(SUDO) chmod +x $(NO_SERVICE) && made=1; fi; \
		$(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q --no-install-recommends \
			prometheus prometheus-alertmanager; status=$$?; \
		if [ -n "$$made" ]; then $(SUDO) rm -f $(NO_SERVICE); fi; \
		if [ -d /run/systemd/system ]; then \
			$(SUDO) systemctl disable --now prometheus prometheus-alertmanager || true; fi; \
		exit $$status; fi

# The multi-host tests (tests/hosts/): iproute2 (ip netns), util-linux (unshare,
# nsenter, runuser), PostgreSQL's and Redis's server binaries (each test host runs its own;
# services started by the packages are refused as above), faketime (a host's clock ahead).
HOSTS_PACKAGES := iproute2 util-linux postgresql redis-server faketime
hosts-deps:
	@if ! command -v ip >/dev/null || ! command -v faketime >/dev/null || \
		! command -v redis-server >/dev/null || ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then \
		made=; if [ ! -e $(NO_SERVICE) ]; then \
			printf '#!/bin/sh\nexit 101\n' | $(SUDO) tee $(NO_SERVICE) >/dev/null && \
			$(SUDO) chmod +x $(NO_SERVICE) && made=1; fi; \
		$(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q --no-install-recommends \
			$(HOSTS_PACKAGES); status=$$?; \
		if [ -n "$$made" ]; then $(SUDO) rm -f $(NO_SERVICE); fi; exit $$status; fi

hosts-test: setup system-deps ## the multi-host scenarios alone (root: network namespaces; make test runs them too)
	$(PY) -m pytest tests/hosts -v

run: setup ## transcribe the bundled sample on the embedded default (temporary Prefect, SQLite, local Dask)
	$(PY) -m cli transcribe $(SAMPLE) --out out/

test: setup system-deps ## lint, type check, then the whole test suite
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(MAKE) --no-print-directory typecheck
	$(PY) -m pytest

typecheck: setup ## mypy over the whole project, strict on store/, tasks/ and api/ (pyproject.toml)
	$(VENV)/bin/mypy

lint: setup
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

bench: setup system-deps ## speed and accuracy figures, one JSON line each
	$(PY) -m bench.asr

bench-api: setup ## API figures: status reads on 10,000 PostgreSQL jobs, submission latency
	$(PY) -m bench.api

api: setup ## the REST API on RELAY_API_HOST:RELAY_API_PORT (embedded Prefect when PREFECT_API_URL is unset)
	$(PY) -m cli api

bootstrap: setup ## make the Prefect server at PREFECT_API_URL ready for Relay (idempotent)
	$(PY) -m cli bootstrap

discord-commands: setup ## register the slash commands with Discord as RELAY_DISCORD_COMMANDS says (idempotent; needs RELAY_DISCORD_APPLICATION_ID and RELAY_DISCORD_BOT_TOKEN)
	$(PY) -m cli discord commands

stack: setup system-deps ## the whole system on this machine, no Docker: Prefect on PostgreSQL, warm Dask, a worker per pool, the API, Prometheus
	$(PY) -m cli stack up

stack-down: ## stop exactly what `make stack` started
	$(PY) -m cli stack down

bench-batch: setup system-deps ## batch: videos/min with 1 and 2 workers, skew, worker memory
	$(PY) -m bench.batch

bench-bot: setup ## bot: chat latency under 5 x 100 messages/min, quota path throughput
	$(PY) -m bench.bot

bench-stack: setup system-deps ## submission latency (warm stack, embedded) and three users at once; starts the stack if needed
	$(PY) -m bench.stack --embedded

bench-metrics: setup ## a /metrics scrape on 100,000 jobs and bot requests (PostgreSQL), request metrics' cost on status reads
	$(PY) -m bench.metrics

bench-interactions: setup ## Discord interactions: time to the deferred answer over 50 signed /chat commands, beside the REST intake
	$(PY) -m bench.interactions

bench-intake: setup system-deps ## the API's intake check on a 30-min MP3 beside a plain ffmpeg decode
	$(PY) -m bench.intake

ui: setup ## the Prefect UI over the runs that `make run` recorded
	$(VENV)/bin/prefect server start

clean:
	rm -rf .relay out
