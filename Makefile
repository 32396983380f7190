# `make demo` runs the main job on the demo model; `make test` passes the tests.
# Both set themselves up: a virtual environment in .venv with torch's CPU wheel (torch==2.13.0 lies
# on this machine's disk; an unpinned torch would pull a multi-GB CUDA build). On a GPU machine:
#   make install TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
# Extras to install: CI adds `interop` (gptqmodel + optimum) so the interop tests run there.
EXTRAS ?= dev
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install llama-cpp demo test test-fast test-quality-matrix lint format bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check $(TORCH_SPEC)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e ".[$(EXTRAS)]"
	touch $@

# llama.cpp's Python binding (GGUF export to k-quants, and the harness's llama.cpp runtime): built
# once per machine from the pinned sdist with flags this VM runs (no -march=native, no AMX), cached
# under ~/.cache/compress/llama-cpp; about 5 minutes the first time on 2 cores, seconds after.
llama-cpp: install
	tools/build_llama_cpp.sh $(BIN)/python

demo: install
	HF_HUB_OFFLINE=1 $(BIN)/compress demo

test: install
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest

# The day-to-day loop: tests that need no trained model and are not marked slow (cores on tiny
# tensors, surgery, packing and kernels on tiny random models, CLI errors). `make test` is the suite.
test-fast: install
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -m fast -p no:cacheprovider

# The quality tests on demo models of three training seeds, with bf16 autocast on and off: what
# another machine's build could be. Each build trains (about 2 minutes) and is cached; the measured
# values are in .cache/quality-matrix/*.xml (JUnit properties).
test-quality-matrix: install
	for seed in 0 1 2; do for autocast in bf16 fp32; do \
	  echo "== demo seed $$seed, autocast $$autocast"; \
	  HF_HUB_OFFLINE=1 COMPRESS_TEST_DEMO_SEED=$$seed COMPRESS_TEST_DEMO_AUTOCAST=$$autocast \
	    $(BIN)/python -m pytest -q -m quality -p no:cacheprovider -o junit_family=xunit1 \
	    --junitxml=.cache/quality-matrix/seed$$seed-$$autocast.xml || exit 1; \
	done; done

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: install
	HF_HUB_OFFLINE=1 $(BIN)/python bench/load_and_cast.py
	HF_HUB_OFFLINE=1 $(BIN)/python bench/quantize.py
	HF_HUB_OFFLINE=1 $(BIN)/python bench/eval_speed.py

clean:
	rm -rf $(VENV) .cache .pytest_cache .ruff_cache compressed
