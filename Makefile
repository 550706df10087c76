# Two set-up commands: `make demo` and `make test`. Both create (or reuse) .venv.
#
# TORCH picks the PyTorch build. The default pins the CPU build that lies on our
# development and CI machines' disk; an unpinned `torch` would pull a multi-GB CUDA build.
# On a GPU machine:   make test TORCH=torch        (or any wheel/index you prefer)

PYTHON ?= python3
VENV   ?= .venv
TORCH  ?= torch==2.13.0
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip --disable-pip-version-check -q

.PHONY: demo test test-fast bench bench-smoke lint clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip setuptools wheel

# One stamp per extra set, so `make test` after `make demo` only adds what is missing.
$(VENV)/.torch: | $(PY)
	$(PIP) install "$(TORCH)"
	@touch $@

$(VENV)/.demo: pyproject.toml $(VENV)/.torch
	$(PIP) install -e ".[lab,report]"
	@touch $@

$(VENV)/.dev: pyproject.toml $(VENV)/.torch
	$(PIP) install -e ".[dev]"
	@touch $@

demo: $(VENV)/.demo
	$(PY) -m gradguard demo

test: $(VENV)/.dev
	$(PY) -m pytest -q

# The fast lane (130 s on 2 idle cores at d7ef03b; 966 tests): no slow or multi-process tests, and the doctests of
# the modules that need no framework (conftest.py says which files count as slow).
test-fast: $(VENV)/.dev
	$(PY) -m pytest -q -m "not slow and not distributed" tests src/gradguard --ignore=src/gradguard/integrations --ignore=src/gradguard/lab --ignore=src/gradguard/keras

# ruff's rule set is in pyproject.toml ([tool.ruff]); ruff comes with the dev extra.
lint: $(VENV)/.dev
	$(PY) -m ruff check src tests benchmarks examples

# Full CPU run (about 10 minutes on 2 cores); the peer clippers come from the `bench` extra.
# On a GPU: $(PY) -m benchmarks.run --device cuda --out DIR
bench: $(VENV)/.dev
	$(PIP) install -e ".[bench]"
	$(PY) -m benchmarks.run

bench-smoke: $(VENV)/.dev
	$(PY) -m benchmarks.run --smoke

# The diagnosis benchmark: broken runs of the zoo, diagnosed, remedied (a few minutes on one core).
.PHONY: bench-diagnosis
bench-diagnosis: $(VENV)/.dev
	$(PY) -m benchmarks.diagnosis.run --markdown BENCHMARKS.md

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache
