# One command each, on a fresh machine: every target makes .venv and installs curate first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
BENCH_STAMP := $(VENV)/.bench-stamp

.PHONY: install test demo bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11) and "curate needs Python 3.11 or newer")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

test: install
	$(BIN)/ruff check .
	$(BIN)/mypy
	bash scripts/ensure-postgres.sh
	$(BIN)/python -m pytest -n auto --dist worksteal --durations=25

demo: install
	PATH="$(CURDIR)/$(BIN):$$PATH" bash scripts/demo.sh

$(BENCH_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev,bench]'
	touch $(BENCH_STAMP)

bench: install $(BENCH_STAMP)
	cd bench && ../$(BIN)/python bench_startup.py && ../$(BIN)/python bench_import.py && ../$(BIN)/python bench_harvest.py && ../$(BIN)/python bench_listen.py && ../$(BIN)/python bench_submit.py && ../$(BIN)/python bench_views.py && ../$(BIN)/python bench_export.py && ../$(BIN)/python bench_redact.py && ../$(BIN)/python bench_neardup.py && ../$(BIN)/python bench_judge.py --collect polling && ../$(BIN)/python bench_tokens.py && bash ../scripts/ensure-postgres.sh && ../$(BIN)/python bench_lake.py
	CURATE_KILL_TRIALS=20 CURATE_HARVEST_KILL_TRIALS=10 $(BIN)/python -m pytest -q tests/test_spool_kill.py -k killed
	CURATE_SUBMIT_KILL_TRIALS=20 $(BIN)/python -m pytest -q tests/test_submit_races.py -k killed
	CURATE_LAKE_RACE_ROUNDS=10 $(BIN)/python -m pytest -q tests/test_lake_race.py

clean:
	rm -rf $(VENV) demo-out bench/data .pytest_cache
