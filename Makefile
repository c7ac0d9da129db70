# Two entry points for a fresh machine with Python 3.11 and make:
#   make quickstart   set up .venv and run the quickstart RFT job on the embedded model
#   make test         set up .venv with the dev extras and run lint + the test suite
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
NODEPS = $(shell $(PYTHON) -c "import tomllib;print(' '.join(tomllib.load(open('pyproject.toml','rb'))['tool']['openrft']['no-deps']))")

.PHONY: quickstart test setup setup-dev lint clean vendor browser

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

setup: $(VENV)/.setup vendor
setup-dev: $(VENV)/.setup-dev vendor browser

# The dashboard's front-end libraries come from the npm registry when the project is built: never
# committed, never fetched by a page at run time. Each entry: package@version=sha256 of the registry
# tarball:files taken from its package/ folder. A wrong checksum stops the build; without npm the
# dashboard still runs, without live charts.
DASHBOARD_VENDOR := src/openrft/server/dashboard/static/vendor
VENDOR_JS := htmx.org@2.0.11=165a2655073e9e6e55e307a7c74e8ebcdb76afb7701f9c16cfd106a13add408e:dist/htmx.min.js \
	uplot@1.6.32=4b8a8191e425658e3ea8c8c1314b0fc679c861ee3a1af2b20c7b16ba50b5133d:dist/uPlot.iife.min.js,dist/uPlot.min.css

vendor:
	@if [ "$$(cat $(DASHBOARD_VENDOR)/.pins 2>/dev/null)" = "$(VENDOR_JS)" ]; then exit 0; fi; \
	if ! command -v npm >/dev/null; then echo "make vendor: npm not found; the dashboard will have no live charts"; exit 0; fi; \
	set -e; tmp=$$(mktemp -d); trap 'rm -rf "$$tmp"' EXIT; mkdir -p $(DASHBOARD_VENDOR); \
	for item in $(VENDOR_JS); do \
	  spec=$${item%%=*}; rest=$${item#*=}; sum=$${rest%%:*}; files=$${rest#*:}; \
	  tgz=$$(cd "$$tmp" && npm pack --silent "$$spec" | tail -n 1); \
	  echo "$$sum  $$tmp/$$tgz" | sha256sum --check --quiet - || { echo "make vendor: $$spec does not match its pinned sha256"; exit 1; }; \
	  for f in $$(echo "$$files" | tr , ' '); do \
	    tar -xzf "$$tmp/$$tgz" -C "$$tmp" "package/$$f"; cp "$$tmp/package/$$f" $(DASHBOARD_VENDOR)/; \
	  done; \
	done; \
	echo "$(VENDOR_JS)" > $(DASHBOARD_VENDOR)/.pins; echo "vendored $(VENDOR_JS)" | tr ' ' '\n' | sed 's/=.*//'

# Debian packages some tests use: Chromium and its chromedriver for the browser tests (nothing is
# downloaded by the tests), g++ for torch.compile on a CPU (the compiled decoding step's tests).
browser:
	@missing=""; command -v chromium >/dev/null || missing="$$missing chromium"; \
	command -v chromedriver >/dev/null || missing="$$missing chromium-driver"; \
	command -v g++ >/dev/null || missing="$$missing g++"; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ]; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	else echo "make browser: as root, apt-get install$$missing (the tests that need them skip)"; fi

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
