# pgjobs developer commands. `make help` lists them.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
PG15   := /usr/lib/postgresql/15/bin
# Parallel test processes (pytest-xdist); the machine has 2 cores.
JOBS   ?= 2

.DEFAULT_GOAL := help
.PHONY: help install system-deps test test-pg15 lint demo quickstart chaos failover bench peers clean

help: ## Show this list
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-11s %s\n", $$1, $$2}'

install: $(STAMP) system-deps ## Create .venv with pgjobs (editable) and its dev extra

system-deps: ## Install PgBouncer, Chromium and pg_auto_failover for their tests when missing (as root; says what to do otherwise)
	@scripts/install-system-deps

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --editable '.[dev]'
	touch $(STAMP)

test: install ## Run the test suite against a throwaway PostgreSQL it starts itself
	$(BIN)/pytest -n $(JOBS) --dist loadgroup $(PYTEST_ARGS)

test-pg15: install ## The database tests again, on Debian's PostgreSQL 15 (if installed)
	@if [ -x $(PG15)/postgres ]; then \
		PGJOBS_TEST_BINDIR=$(PG15) $(BIN)/pytest -n $(JOBS) --dist loadgroup -m "not slow" $(PYTEST_ARGS); \
	else echo "PostgreSQL 15 binaries not found under $(PG15); skipping"; fi

lint: install ## ruff, mypy, and the import layers (lint-imports: one-way, no cycles)
	$(BIN)/ruff check pgjobs tests migrations examples benchmarks
	$(BIN)/mypy
	$(BIN)/lint-imports

demo: install ## The newsletter demo: 10,000 subscribers, a rolling restart, a SIGKILL, a count
	$(BIN)/python examples/newsletter/demo.py $(DEMO_ARGS)

quickstart: install ## The quickstart demo: transactional enqueue and a worker, row by row
	$(BIN)/python examples/quickstart/demo.py

chaos: install ## The fault-injection suite at full size
	PGJOBS_CHAOS_SCALE=full $(BIN)/pytest -m chaos $(PYTEST_ARGS)

failover: install ## Two failovers of a pg_auto_failover cluster under load (about 3 min)
	PGJOBS_CHAOS_SCALE=full $(BIN)/pytest -m chaos tests/chaos/test_failover.py $(PYTEST_ARGS)

bench: install ## pgjobs bench against minimal SQL on a throwaway durable server
	$(BIN)/pgjobs bench --embedded $(BENCH_ARGS)

peers: install ## pgjobs, pgqueuer and procrastinate side by side (benchmarks/peers.py)
	$(BIN)/python benchmarks/peers.py $(BENCH_ARGS)

clean: ## Stop the local server and remove build output (keeps .venv)
	-$(BIN)/pgjobs dev stop
	rm -rf dist build .pytest_cache .mypy_cache .ruff_cache
