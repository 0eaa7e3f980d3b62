# Two commands set everything up on a fresh machine: `make chat` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
TORCH  := torch==2.13.0

.PHONY: install chat test test-slow bundled clean

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

# Reproduces bundled/ from scratch with the project's own commands (docs/bundled-model.md; ~40 min on 2 CPU cores).
LWM := $(VENV)/bin/lwm
bundled: install
	$(LWM) data world runs/bundled/world --clips 1500
	$(LWM) tokenizer train-text runs/bundled/world/manifest.jsonl --vocab-size 768 -o runs/bundled/text-tokenizer
	$(LWM) tokenizer train runs/bundled/world/manifest.jsonl -o runs/bundled/vqgan --model bundled --steps 200 \
		--warmup-steps 20 --batch-size 16 --lr 1e-3 --l2-weight 1.0 --log-every 10 --eval-every 1000 --save-every 50 --eval-frames 64
	$(LWM) data tokenize runs/bundled/world/manifest.jsonl --out runs/bundled/tokens --tokenizer runs/bundled/text-tokenizer \
		--vqgan runs/bundled/vqgan --max-frames 4 --workers 2
	$(LWM) train configs/train/bundled.yaml
	$(LWM) train configs/train/bundled.yaml --export-only --export-dir bundled
	cp configs/eval/bundled-bars.json bundled/eval_bars.json

clean:
	rm -rf $(VENV) build *.egg-info
