# Two commands set everything up on a fresh machine: `make chat` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
TORCH  := torch==2.13.0

.PHONY: install chat test test-slow lint constraints bundled bundled-data clean

install: $(STAMP)

# The stamp makes `make install` idempotent: it re-runs only when the package metadata or the pinned versions change.
$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH) setuptools wheel
	# DeepSpeed is built here with its shared-memory op, or its first distributed run compiles it (~40 s).
	DS_BUILD_SHM_COMM=1 $(PY) -m pip install --quiet --no-cache-dir --no-build-isolation -c constraints.txt deepspeed
	$(PY) -m pip install --quiet -c constraints.txt -e ".[dev,train,serve]"
	touch $(STAMP)

chat: install
	$(VENV)/bin/lwm chat

test: install
	$(PY) -m pytest

test-slow: install
	$(PY) -m pytest -m slow

# ruff's settings are in pyproject.toml ([tool.ruff]).
lint: install
	$(VENV)/bin/ruff check lwm tests benchmarks

# Pins what the venv holds now (run after `make test` passes on newer versions).
constraints: install
	{ sed -n '/^#/p' constraints.txt; $(PY) -m pip freeze --exclude-editable | grep -v '^torch=='; } > constraints.txt.new
	mv constraints.txt.new constraints.txt

LWM := $(VENV)/bin/lwm

# Reproduces lwm/bundled/ from scratch with the project's own commands (docs/bundled-model.md): the first
# training step about 20 min on one GPU (days on 2 CPU cores), the second, third and fourth 66 min, 2 h 40 min
# and 1 h 38 min on 2 CPU cores. Each intermediate is a file target, so an interrupted `make bundled` redoes
# only what is missing. WORKERS processes render and tokenize; DEVICE runs the VQGAN while tokenizing (the
# trainers take the GPU by themselves when there is one); TRAIN_ARGS are `lwm train` overrides (key=value)
# of configs/train/bundled.yaml; the model goes to BUNDLED.
WORKERS    ?= 2
DEVICE     ?= cpu
TRAIN_ARGS ?=
BUNDLED    ?= lwm/bundled
RUN        := runs/bundled

$(RUN)/world/manifest.jsonl: | install
	$(LWM) data world $(RUN)/world --clips 8000 --needles 4000 --workers $(WORKERS)

$(RUN)/text-tokenizer/tokenizer.model: $(RUN)/world/manifest.jsonl
	$(LWM) tokenizer train-text $< --vocab-size 768 -o $(RUN)/text-tokenizer

$(RUN)/vqgan/model.safetensors: $(RUN)/world/manifest.jsonl
	$(LWM) tokenizer train configs/train/bundled-vqgan.yaml num_workers=$(WORKERS)

# The needle curriculum of configs/train/bundled-needles.yaml: short haystacks, then log-uniform ones up to
# the trained length, each beside 2000 of the training clips replayed.
$(RUN)/needles-short/manifest.jsonl: | install
	$(LWM) data world $(RUN)/needles-short --clips 2000 --needles 20000 --needle-chars 80 400 --workers $(WORKERS)

$(RUN)/needles-long/manifest.jsonl: | install
	$(LWM) data world $(RUN)/needles-long --clips 2000 --needles 20000 --needle-chars 80 12000 --needle-spread log \
		--workers $(WORKERS)

# The third step's data (configs/train/bundled-continue.yaml): every task of the world, needles replayed.
$(RUN)/continue/manifest.jsonl: | install
	$(LWM) data world $(RUN)/continue --clips 10000 --needles 10000 --needle-chars 80 12000 --needle-spread log \
		--tasks video_caption video_qa video_conversation image_text text_to_video video_continuation text \
		unconditional --workers $(WORKERS)

TOKENIZE_DEPS := $(RUN)/text-tokenizer/tokenizer.model $(RUN)/vqgan/model.safetensors
TOKENIZE = $(LWM) data tokenize $< --out $(@D) --tokenizer $(RUN)/text-tokenizer --vqgan $(RUN)/vqgan \
	--max-frames 4 --max-length 2560 --workers $(WORKERS) --device $(DEVICE)

$(RUN)/tokens/index.json: $(RUN)/world/manifest.jsonl $(TOKENIZE_DEPS)
	$(TOKENIZE)

$(RUN)/needles-%-tokens/index.json: $(RUN)/needles-%/manifest.jsonl $(TOKENIZE_DEPS)
	$(TOKENIZE)

$(RUN)/continue-tokens/index.json: $(RUN)/continue/manifest.jsonl $(TOKENIZE_DEPS)
	$(TOKENIZE)

bundled-data: $(RUN)/tokens/index.json $(RUN)/needles-short-tokens/index.json $(RUN)/needles-long-tokens/index.json \
	$(RUN)/continue-tokens/index.json

bundled: bundled-data
	$(LWM) train configs/train/bundled.yaml $(TRAIN_ARGS)
	$(LWM) train configs/train/bundled-needles.yaml
	$(LWM) train configs/train/bundled-continue.yaml
	$(LWM) train configs/train/bundled-qa.yaml
	$(LWM) train configs/train/bundled-qa.yaml --export-only --export-dir $(BUNDLED)
	cp configs/eval/bundled-bars.json $(BUNDLED)/eval_bars.json

clean:
	rm -rf $(VENV) build *.egg-info
