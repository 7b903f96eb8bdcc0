# modelseal: `make run` runs the whole flow on loopback; `make test` runs every check.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha256sum | cut -c1-12)

.PHONY: run test lint typecheck imports pytest soak bench fuzz system clean venv

venv: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -qq --disable-pip-version-check -e '.[all,dev]'
	@rm -f $(VENV)/.installed-*
	@touch $@

system:
	@bash scripts/setup-system.sh

run: venv
	$(VENV)/bin/modelseal quickstart

lint: venv
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/ruff format --check src tests bench

typecheck: venv
	$(VENV)/bin/mypy src

imports: venv
	$(VENV)/bin/lint-imports

# most end-to-end tests wait on real servers and subprocesses: more workers than cores pays
PYTEST_WORKERS ?= 4
# Bytecode on: the end-to-end tests start hundreds of modelseal processes, and compiling every
# module from source in each (PYTHONDONTWRITEBYTECODE set in the environment) costs more CPU
# than many tests themselves. Compiled once here, reused by every process.
pytest: venv system
	$(PY) -m compileall -q -x '/vectors/' src tests bench
	PYTHONDONTWRITEBYTECODE= $(VENV)/bin/pytest -q -p no:cacheprovider -n $(PYTEST_WORKERS) --dist loadgroup

test: lint typecheck imports pytest

# kill -9 durability runs of the KBS (SQLite, PostgreSQL, replicas) and the registry:
# SOAK_KILLS kill points per configuration (MODELSEAL_DURABILITY_SEED=N replays a run).
SOAK_KILLS ?= 200
soak: venv system
	MODELSEAL_SOAK_KILLS=$(SOAK_KILLS) $(VENV)/bin/pytest -q -p no:cacheprovider -m soak \
		--timeout 0 -s tests/e2e/durability

# every fuzz target for FUZZ_SECONDS each: hypothesis (structure-aware), then atheris
# (coverage-guided, from the real seeds); FUZZ_TARGETS="tdx-quote snp-report" narrows it
FUZZ_SECONDS ?= 60
FUZZ_TARGETS ?=
fuzz: venv
	@status=0; \
	FUZZ_SECONDS=$(FUZZ_SECONDS) $(VENV)/bin/pytest -q -p no:cacheprovider --timeout=0 tests/fuzz \
		$(if $(FUZZ_TARGETS),-k "$(subst $(eval) , or ,$(strip $(FUZZ_TARGETS)))") || status=1; \
	$(PY) -m tests.fuzz --seconds $(FUZZ_SECONDS) $(FUZZ_TARGETS) || status=1; \
	exit $$status

bench: venv
	$(PY) -m bench

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache
