# Two commands matter: `make run` and `make test`. Everything else is a helper.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# The stamp changes when a requirements file changes, so `make` reinstalls exactly then.
STAMP  := $(VENV)/.installed-$(shell cat requirements.txt requirements-dev.txt | cksum | cut -d' ' -f1)

.PHONY: run test venv lint format check bench stop clean-db help

help:
	@echo "make run     start database, migrations, demo district, web, worker and beat"
	@echo "make test    run the whole test suite"
	@echo "make lint    ruff check and format check"
	@echo "make check   Django system checks and missing-migration check"
	@echo "make bench   run the benchmarks in bench/ (slow)"
	@echo "make stop    stop the embedded PostgreSQL if it still runs"

$(STAMP): requirements.txt requirements-dev.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements-dev.txt
	@rm -f $(VENV)/.installed-*
	@touch $@

venv: $(STAMP)

run: venv
	$(BIN)/python manage.py runstack

test: venv
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: venv
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

check: venv
	$(BIN)/python manage.py check --fail-level WARNING
	$(BIN)/python manage.py makemigrations --check --dry-run

bench: venv
	$(BIN)/python -m bench.seed_demo
	$(BIN)/python -m bench.admin_student_list

stop: venv
	$(BIN)/python -m bxos.common.embedded_pg stop

clean-db: stop
	rm -rf var/pgdata
