# Two commands set everything up on a fresh machine: `make chat` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
TORCH  := torch==2.13.0

.PHONY: install chat test test-slow bench clean

install: $(STAMP)

# The stamp makes `make install` idempotent: it re-runs only when the package metadata changes.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH) setuptools wheel
	# DeepSpeed is built here with its shared-memory op, or its first distributed run compiles it (~40 s).
	DS_BUILD_SHM_COMM=1 $(PY) -m pip install --quiet --no-cache-dir --no-build-isolation deepspeed
	$(PY) -m pip install --quiet -e ".[dev,train,serve]"
	touch $(STAMP)

chat: install
	$(VENV)/bin/lwm chat

test: install
	$(PY) -m pytest

test-slow: install
	$(PY) -m pytest -m slow

clean:
	rm -rf $(VENV) build *.egg-info
