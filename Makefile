# The one interface for developing BackOBS. `make help` lists the targets.
PYTHON ?= python3
PYTEST_ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help install installed test test-all lint format bench docs clean

help: ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | \
		awk 'BEGIN {FS = ":.*## "}; {printf "  make %-10s %s\n", $$1, $$2}'

install: ## install BackOBS editable, with the test extra, into the active Python
	$(PYTHON) -m pip install -e ".[test]"

installed: # install only if the package or the test tools are missing
	@$(PYTHON) -c "import backobs, backpack_core, pytest, pytest_cov" 2>/dev/null || $(MAKE) install

test: installed ## run the test suite (installs first if needed); slow cases excluded
	$(PYTHON) -m pytest -m "not slow" --cov=backobs --cov=backpack_core --cov-report=term $(PYTEST_ARGS)

test-all: installed ## run every test, the slow ones (VGG at 224x224) included
	$(PYTHON) -m pytest $(PYTEST_ARGS)

lint: installed ## ruff: lint, import order, Google docstrings, and the format check
	$(PYTHON) -m ruff check .
	$(PYTHON) -m ruff format --check .

format: installed ## apply the formatter and the safe lint fixes
	$(PYTHON) -m ruff check --fix .
	$(PYTHON) -m ruff format .

bench: installed ## time the extensions against plain backward and the peers (writes benchmark/results/)
	$(PYTHON) -m pip install -e ".[bench]"
	$(PYTHON) benchmark/run.py

docs: ## build the HTML API reference, warnings as errors
	$(PYTHON) -m pip install -e ".[docs]"
	$(PYTHON) -m sphinx -W --keep-going -E -b html docs docs/_build/html

clean: ## remove build and test artefacts
	rm -rf build dist *.egg-info .pytest_cache .ruff_cache .coverage htmlcov docs/_build
