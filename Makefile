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

# Reproduces lwm/bundled/ from scratch with the project's own commands on 2 CPU cores (docs/bundled-model.md
# gives the time of each step). Each intermediate is a file target, so an interrupted `make bundled` redoes
# only what is missing (and `lwm train ... --resume auto` goes on from its last checkpoint). WORKERS processes
# render and tokenize; DEVICE runs the VQGAN while tokenizing (the trainers take a GPU by themselves when
# there is one); TRAIN_ARGS are `lwm train` overrides (key=value) of configs/train/bundled.yaml; the model
# goes to BUNDLED.
WORKERS    ?= 2
DEVICE     ?= cpu
TRAIN_ARGS ?=
BUNDLED    ?= lwm/bundled
RUN        := runs/bundled
TASKS      := video_caption video_qa video_conversation image_text unconditional text_to_video video_continuation text

# The world the VQGAN and the text tokenizer learn from, and the (smaller) one the decoder's examples come
# from: a pass over the larger one would take more time to tokenize than the decoder has to read it.
$(RUN)/world/manifest.jsonl: | install
	$(LWM) data world $(RUN)/world --clips 12000 --needles 6000 --needle-chars 80 4400 --needle-spread log \
		--tasks $(TASKS) --workers $(WORKERS)

$(RUN)/world-decoder/manifest.jsonl: | install
	$(LWM) data world $(RUN)/world-decoder --clips 5000 --needles 4000 --needle-chars 80 4400 --needle-spread log \
		--tasks $(TASKS) --workers $(WORKERS)

# The needles alone in short haystacks, where a decoder first learns to copy (the second stage of bundled.yaml).
$(RUN)/needles-short/manifest.jsonl: | install
	$(LWM) data world $(RUN)/needles-short --clips 0 --needles 8000 --needle-chars 80 400

$(RUN)/text-tokenizer/tokenizer.model: $(RUN)/world/manifest.jsonl
	$(LWM) tokenizer train-text $< --vocab-size 768 -o $(RUN)/text-tokenizer

$(RUN)/vqgan/model.safetensors: $(RUN)/world/manifest.jsonl
	$(LWM) tokenizer train configs/train/bundled-vqgan.yaml num_workers=$(WORKERS)

TOKENIZE_DEPS := $(RUN)/text-tokenizer/tokenizer.model $(RUN)/vqgan/model.safetensors
TOKENIZE = $(LWM) data tokenize $< --out $(@D) --tokenizer $(RUN)/text-tokenizer --vqgan $(RUN)/vqgan \
	--max-frames 16 --max-length 1280 --workers $(WORKERS) --device $(DEVICE)

$(RUN)/tokens/index.json: $(RUN)/world-decoder/manifest.jsonl $(TOKENIZE_DEPS)
	$(TOKENIZE)

$(RUN)/needles-short-tokens/index.json: $(RUN)/needles-short/manifest.jsonl $(TOKENIZE_DEPS)
	$(TOKENIZE)

bundled-data: $(RUN)/tokens/index.json $(RUN)/needles-short-tokens/index.json

# The export, its bars, and the clip `lwm chat` offers to try (held-out clip 1000001 of the world).
bundled: bundled-data
	$(LWM) train configs/train/bundled.yaml $(TRAIN_ARGS)
	$(LWM) train configs/train/bundled.yaml --export-only --export-dir $(BUNDLED)
	cp configs/eval/bundled-bars.json $(BUNDLED)/eval_bars.json
	$(LWM) data world $(RUN)/sample --split held_out --clips 2 --tasks video_caption
	cp $(RUN)/sample/clips/1000001.mp4 $(BUNDLED)/sample.mp4

clean:
	rm -rf $(VENV) build *.egg-info
