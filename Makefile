# Two entry points: `make demo` and `make test`. Both create .venv if missing and install the project
# with the CPU build of torch pinned to 2.13.0 (an unpinned torch would pull a multi-GB CUDA build).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.tuneguard-installed
export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1

.PHONY: install demo test lint clean

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(PY) pyproject.toml
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(VENV)/bin/tuneguard demo

# The suite runs on TEST_WORKERS pytest-xdist processes (default: one per logical CPU, at most 8); pyproject's
# addopts keep each test module on one worker. TEST_WORKERS=0 runs it in one process.
TEST_WORKERS ?= logical
test: install
	$(PY) -m pytest -q tests -n $(TEST_WORKERS) --maxprocesses=8

lint: install
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks

clean:
	rm -rf $(VENV) demo_runs runs .pytest_cache
