# clip-relay — every command sets itself up: `make demo`, `make test` work on a fresh clone.
# the first Python >= 3.11 on PATH (python3.12, python3.11, then python3 if new enough);
# `make PYTHON=/path/to/python3.11 ...` chooses another
PYTHON ?= $(shell for p in python3.12 python3.11 python3; do \
	command -v $$p >/dev/null 2>&1 && $$p -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
	2>/dev/null && { echo $$p; break; }; done)
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: install demo test lint fmt bench clean chromium screenshots

install: $(STAMP)

$(STAMP): pyproject.toml clients/python/pyproject.toml
	@test -n "$(PYTHON)" || { echo "clip-relay needs Python 3.11 or newer: install python3.11 (Debian/Ubuntu: apt install python3.11-venv) or run make PYTHON=/path/to/python3.11"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: install
	$(BIN)/clip-relay demo

# lint-imports: the import contracts of pyproject.toml (docs/architecture.md)
lint: install
	$(BIN)/ruff check relay workers tests bench clients
	$(BIN)/ruff format --check relay workers tests bench clients
	$(BIN)/lint-imports
	$(BIN)/mypy

fmt: install
	$(BIN)/ruff format relay workers tests bench clients
	$(BIN)/ruff check --fix relay workers tests bench clients

# the dashboard's browser tests (tests/test_ui.py) drive Debian's chromium through Playwright
# (Playwright's own browser download is not used): installed here when missing (root + apt)
chromium:
	@command -v chromium >/dev/null 2>&1 || { apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } || \
		echo "chromium could not be installed: the dashboard's browser tests will fail"

# one process: the timing bounds of the chaos and delivery tests assume no other test file
# loads the 2 cores meanwhile (docs/development.md: a faster run in two processes, by hand)
test: lint chromium
	$(BIN)/python -m pytest

# the registration scenario drives load with wrk when it can be installed (root + apt), else
# with bench/loadgen.py; both the relay and its baseline get the same load generator
bench: install
	@command -v wrk >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq wrk; } \
		>/dev/null 2>&1 || echo "wrk not available: registration uses bench/loadgen.py"
	$(BIN)/python bench/run.py

# docs/dashboard-*.png (shown in the README): the dashboard on a real stack, in chromium
screenshots: install chromium
	$(BIN)/python bench/screenshots.py

clean:
	rm -rf $(VENV) build *.egg-info clients/python/build clients/python/*.egg-info .mypy_cache .ruff_cache .pytest_cache .import_linter_cache .grimp_cache
