# Two entry points for a fresh machine with Python 3.11 and make:
#   make quickstart   set up .venv and run the quickstart RFT job on the embedded model
#   make test         set up .venv with the dev extras and run lint + the test suite
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
NODEPS = $(shell $(PYTHON) -c "import tomllib;print(' '.join(tomllib.load(open('pyproject.toml','rb'))['tool']['openrft']['no-deps']))")

.PHONY: quickstart test setup setup-dev lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.setup: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	$(BIN)/python -m pip install --quiet --no-deps $(NODEPS)
	touch $@

$(VENV)/.setup-dev: $(VENV)/.setup
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

setup: $(VENV)/.setup
setup-dev: $(VENV)/.setup-dev

quickstart: setup
	$(BIN)/openrft quickstart

lint: setup-dev
	$(BIN)/ruff check src tests bench examples
	$(BIN)/ruff format --check src tests bench examples
	$(BIN)/lint-imports

test: setup-dev lint
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache .ruff_cache
