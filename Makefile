# Two entry points: `make run` starts the local stack and shows it working; `make test` runs everything.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
UV_VERSION := 0.13.9

.PHONY: install run test lint typecheck unit contract chaos bench package clean

$(BIN)/.installed: pyproject.toml uv.lock
	@command -v uv >/dev/null 2>&1 || $(PYTHON) -m uv --version >/dev/null 2>&1 || \
		$(PYTHON) -m pip install --quiet --disable-pip-version-check "uv==$(UV_VERSION)"
	@if command -v uv >/dev/null 2>&1; then uv sync --frozen --quiet; else $(PYTHON) -m uv sync --frozen --quiet; fi
	@touch $@

install: $(BIN)/.installed

run: install
	$(BIN)/bhiv up --demo

lint: install
	$(BIN)/ruff check src functions tests bench scripts
	$(BIN)/ruff format --check src functions tests bench scripts

typecheck: install
	$(BIN)/mypy
	@# every function's module is called app.py: check each on its own
	@for app in functions/*/app.py; do $(BIN)/mypy --no-error-summary $$app || exit 1; done

test: install lint typecheck
	$(BIN)/pytest

# Schemathesis CLI against the three live services of a freshly started stack (auth on)
contract: install
	$(BIN)/python scripts/contract.py

# Fault injection against bhiv up subprocesses: kill -9 cycles, startup bursts, a torn journal tail,
# a second start, a faulty Bucket behind the Executor; exits non-zero on any loss (docs/reliability.md)
chaos: install
	$(BIN)/python -m tests.chaos.harness --cycles 4

bench: install
	$(BIN)/python bench/bench_bucket.py
	$(BIN)/python bench/bench_karma.py
	$(BIN)/python bench/bench_executor.py
	$(BIN)/python bench/bench_durability.py

# Deployment artifacts for template.yaml: build/layer/python (bhiv + locked runtime deps for Lambda) and build/functions/*
package: install
	$(BIN)/python scripts/package.py

clean:
	rm -rf $(VENV) .bhiv .mypy_cache .ruff_cache
