# The two commands of the README: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint fmt clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

.env:
	cp .env.example .env

## make run: install, migrate, seed demo data, start localstripe, Celery (worker + beat) and the web server.
run: $(STAMP) .env
	$(BIN)/python -m scripts.devserver

## make test: install if needed, run the whole suite (SQLite unless DATABASE_URL says otherwise).
test: $(STAMP)
	$(BIN)/python -m pytest --reuse-db $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy .

fmt: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf var/test.sqlite3 .mypy_cache .ruff_cache
