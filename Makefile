# Two entry points: `make run` starts the local stack and shows it working; `make test` runs everything.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
UV_VERSION := 0.13.9

.PHONY: install run test lint typecheck unit contract chaos bench package clean sam-check rehearse

UV = $(shell command -v uv 2>/dev/null || echo "$(PYTHON) -m uv")
# The AWS SAM CLI pins boto3 exactly (1.43.x for 1.170.0) and cannot share .venv with the locked
# stack (boto3 1.44.5): it lives in its own virtualenv, from the pins in tools/sam/requirements.txt.
SAM_VENV := .venv-sam
SAM := $(SAM_VENV)/bin/sam
# No account, no credentials, no telemetry: sam must work offline on the source template.
SAM_ENV := env -u AWS_PROFILE -u AWS_ACCESS_KEY_ID -u AWS_SECRET_ACCESS_KEY -u AWS_SESSION_TOKEN \
	AWS_CONFIG_FILE=/dev/null AWS_SHARED_CREDENTIALS_FILE=/dev/null AWS_DEFAULT_REGION=us-east-1 SAM_CLI_TELEMETRY=0

# Progress is shown (uv prints what it resolves, downloads and installs): a cold install takes minutes.
$(BIN)/.installed: pyproject.toml uv.lock
	@echo "Installing the project and its dependencies into $(VENV) (a first install downloads ~100 MB and takes a few minutes)..."
	@command -v uv >/dev/null 2>&1 || $(PYTHON) -m uv --version >/dev/null 2>&1 || \
		{ echo "  installing uv $(UV_VERSION) with pip..."; \
		  $(PYTHON) -m pip install --quiet --disable-pip-version-check "uv==$(UV_VERSION)"; }
	@if command -v uv >/dev/null 2>&1; then uv sync --frozen; else $(PYTHON) -m uv sync --frozen; fi
	@touch $@
	@echo "Installed: $(BIN)/bhiv"

install: $(BIN)/.installed

$(SAM_VENV)/.installed: tools/sam/requirements.txt $(BIN)/.installed
	@rm -rf $(SAM_VENV)
	@$(UV) venv --quiet --python 3.11 $(SAM_VENV)
	@$(UV) pip install --quiet --python $(SAM_VENV)/bin/python -r tools/sam/requirements.txt
	@touch $@

# `sam validate --lint` and `sam build` on template.yaml, offline (no Docker: the functions have no
# requirements.txt to build, the layer is src/ as it is; `make package` builds the deployable layer).
sam-check: $(SAM_VENV)/.installed
	$(SAM_ENV) $(SAM) validate --lint --template template.yaml
	@rm -rf build/sam
	$(SAM_ENV) $(SAM) build --template template.yaml --build-dir build/sam --cache-dir build/sam-cache

run: install
	$(BIN)/bhiv up --demo

lint: install
	$(BIN)/ruff check src functions tests bench scripts
	$(BIN)/ruff format --check src functions tests bench scripts

typecheck: install
	$(BIN)/mypy
	@# every function's module is called app.py: check each on its own
	@for app in functions/*/app.py; do $(BIN)/mypy --no-error-summary $$app || exit 1; done

test: install lint typecheck sam-check
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || { \
		echo "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!"; \
		echo "!! No Chromium found: the web console's browser tests (tests/browser) are SKIPPED."; \
		echo "!! Install it with: apt-get install chromium   (.ci/run does this as root)"; \
		echo "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!"; }
	$(BIN)/pytest

# The deploy rehearsal on moto's server (CloudFormation stack, built handlers, API Gateway import)
rehearse: install
	$(BIN)/pytest -m rehearsal tests/rehearsal

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
	$(BIN)/python bench/bench_shards.py

# Deployment artifacts for template.yaml: build/layer/python (bhiv + locked runtime deps for Lambda) and build/functions/*
package: install
	$(BIN)/python scripts/package.py

clean:
	rm -rf $(VENV) $(SAM_VENV) .bhiv .mypy_cache .ruff_cache
