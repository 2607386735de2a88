# Two commands do all set-up on a fresh machine:  `make run`  and  `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(abspath $(VENV))/bin
export PATH := $(BIN):$(PATH)
export PREFECT_HOME ?= $(abspath .prefect)

.PHONY: install run test lint lock

$(VENV)/.installed: pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -r requirements.lock
	$(BIN)/python -m pip install -q --no-deps -e .
	touch $@

install: $(VENV)/.installed  ## create the environment from the lock file

run: install  ## the whole pipeline (Prefect flow over every DVC stage) on params.yaml
	selftok run

test: install  ## ruff over every Python file, then the whole test suite (unit + integration on the smoke profile)
	ruff check .
	python -m pytest -q

lint: install
	ruff check .
	ruff format --check .

lock: install  ## refresh requirements.lock from the current environment
	$(BIN)/python -m pip freeze --exclude-editable | grep -v '^selftok' > requirements.lock
