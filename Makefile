# Khalsi: `make run` brings the platform up on bundled real data, `make test` proves it.
# The first call bootstraps a project-local, locked environment (.venv) with a pinned uv;
# later calls reuse it and install nothing unless uv.lock or pyproject.toml changed.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
UV_VERSION := 0.13.9
UV := .tools/bin/uv
VENV_STAMP := .venv/.synced-$(UV_VERSION)
KHALSI := .venv/bin/khalsi

export UV_PROJECT_ENVIRONMENT := .venv
export UV_PYTHON := $(PYTHON)

.PHONY: run test bench help

help:
	@echo "make run    - ingest, validate and build the platform on the bundled real data"
	@echo "make test   - lint, type-check and run the test suite"
	@echo "make bench  - benchmarks that print figures"

$(UV):
	@$(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 11), "Khalsi needs Python 3.11, found " + sys.version' 
	$(PYTHON) -m venv .tools
	.tools/bin/python -m pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)

$(VENV_STAMP): uv.lock pyproject.toml | $(UV)
	$(UV) sync --frozen --all-groups
	@rm -f .venv/.synced-*
	@touch $@

run: $(VENV_STAMP)
	$(KHALSI) run

test: $(VENV_STAMP)
	$(KHALSI) check

bench: $(VENV_STAMP)
	$(KHALSI) bench
