# The front door. Every target bootstraps .venv from nothing but python3, installing the
# pinned set in constraints.txt, so CI and users run the same versions.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
PYTEST_ARGS ?=
DEMO_ARGS ?=

.PHONY: help venv demo test test-fast bench lint format lock clean

help:
	@echo "make demo       simulate a retailer, load it into a workspace, print what was loaded"
	@echo "make test       run the whole test suite"
	@echo "make test-fast  the suite without tests marked slow"
	@echo "make bench      the benchmark scripts (speed and memory figures)"
	@echo "make lint       ruff check, ruff format --check, mypy"

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --upgrade "pip>=24"
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev]'
	@touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/nextbest demo --dir build/demo $(DEMO_ARGS)

test: $(STAMP)
	sh build-aux/ensure-chromium.sh
	$(BIN)/python -m pytest -n 2 $(PYTEST_ARGS)

test-fast: $(STAMP)
	sh build-aux/ensure-chromium.sh
	$(BIN)/python -m pytest -n 2 -m "not slow" $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/python bench/bench_simulate.py
	$(BIN)/python bench/bench_ingest.py
	$(BIN)/python bench/bench_features.py
	$(BIN)/python bench/bench_basket.py
	$(BIN)/python bench/bench_models.py
	$(BIN)/python bench/bench_decide.py
	$(BIN)/python bench/bench_batch.py
	$(BIN)/python bench/bench_batch.py --customers 5000000 --keep build/bench-5m
	$(BIN)/python bench/bench_serve.py

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff format src tests bench
	$(BIN)/ruff check --fix src tests bench

# Re-pin every dependency to what installs today (run after changing pyproject.toml).
lock:
	rm -rf build/lock-venv
	$(PYTHON) -m venv build/lock-venv
	build/lock-venv/bin/python -m pip install --quiet --upgrade pip
	build/lock-venv/bin/python -m pip install --quiet -e '.[dev]' "duckdb==1.5.6"
	build/lock-venv/bin/python -m pip freeze --exclude-editable | grep -v '^-e' > constraints.txt
	rm -rf build/lock-venv

clean:
	rm -rf $(VENV) build .pytest_cache .ruff_cache .mypy_cache
