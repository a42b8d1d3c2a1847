# Every target is one thing a user can do; `make help` lists them.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
FM_DEB := /usr/share/datasets/fashion-mnist

.PHONY: help setup data browser test book book-smoke notebooks models retrain-zoo quick-model bench ablation gpu-check clean
BOOK := $(BIN)/python -m gclib.book
# Installs a Debian package when it is missing: as root, with sudo, or says what to run.
APT_INSTALL = if [ "$$(id -u)" -eq 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(1); \
  elif command -v sudo >/dev/null; then sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(1); \
  else echo "missing: run 'apt-get install $(1)' as root"; exit 1; fi

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

# Debian's python3 has no venv module until python3-venv is installed: install it when we can.
$(BIN)/python:
	@$(PYTHON) -m venv $(VENV) 2>/dev/null || { rm -rf $(VENV); \
	  if [ "$$(id -u)" -eq 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv; \
	  elif command -v sudo >/dev/null; then sudo apt-get update -qq && sudo apt-get install -y -qq python3-venv; \
	  else echo "python3 -m venv failed: install python3-venv (apt-get install python3-venv)"; exit 1; fi; \
	  $(PYTHON) -m venv $(VENV); }

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[test]"
	touch $@

setup: $(VENV)/.installed  ## create .venv and install gclib with its pinned dependencies

data:  ## install Fashion-MNIST from Debian (dataset-fashion-mnist) unless GCLIB_DATA is set
	@if [ -n "$$GCLIB_DATA" ] || [ -d $(FM_DEB) ]; then exit 0; fi; \
	if [ "$$(id -u)" -eq 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist; \
	elif command -v sudo >/dev/null; then sudo apt-get update -qq && sudo apt-get install -y -qq dataset-fashion-mnist; \
	else echo "Fashion-MNIST missing: run 'apt-get install dataset-fashion-mnist' as root, or set GCLIB_DATA to a folder with the IDX files"; exit 1; fi

browser:  ## install Debian's chromium for the tests' browser check (unless CHROMIUM points to one)
	@if [ -n "$$CHROMIUM" ] || command -v chromium >/dev/null; then exit 0; fi; $(call APT_INSTALL,chromium)

test: setup data browser  ## run the test suite (CPU): includes every notebook (smoke), the book build and a browser check
	$(BIN)/python -m pytest

quick-model: setup data  ## train a small beta=8 GC on Fashion-MNIST (1 epoch, CPU) and print its test accuracy
	$(BIN)/python -m gclib.train --config fashion-mnist-small --beta 8 --epochs 1 --out runs/quick --resume --eval-test

book: setup data  ## THE main job: run every notebook with the "paper" parameters and build the book into _build/html
	$(BOOK) all --params paper

book-smoke: setup data  ## the same with the tiny "smoke" parameters, in _build/smoke (figures in _build/smoke/figures)
	$(BOOK) all --params smoke --root _build/smoke

notebooks: setup data  ## only run the notebooks ("paper"): figures/ and book/executed/, no book build
	$(BOOK) run --params paper

models: setup data  ## only the model-zoo notebooks: table_models, fig_beta_tradeoff, fig_training_curves
	$(BOOK) run --params paper --only train_model models

# Models trained at once by retrain-zoo (one process per core, one thread each).
RETRAIN_JOBS ?= 2
retrain-zoo: setup data  ## retrain every zoo model, RETRAIN_JOBS at a time, and ship it to checkpoints/ (about 10.3 h of training on 2 CPU cores)
	$(BIN)/python -m gclib.zoo retrain --jobs $(RETRAIN_JOBS)

bench: setup  ## GC vs ResNet DC: images/s and memory, fashion-mnist + imagenet (CPU: batch 2; GPU: 32/64/128) -> figures/table_throughput.*, fig_throughput.*
	$(BIN)/python -m gclib.bench --suite --json runs/bench.json

ablation: setup data  ## what each IB-INN recipe element does: 9 short runs (hours on a CPU) -> figures/table_recipe_ablation.*
	OMP_NUM_THREADS=1 $(BIN)/python -m gclib.ablation train --epochs 4 --beta 1
	$(BIN)/python -m gclib.ablation table --out figures

gpu-check: setup data  ## on a CUDA machine (<= 8 min): CUDA-only tests, the GPU benchmark, a short strong-model run -> runs/gpu-check.json
	$(BIN)/python -m gclib.gpu_check --out runs/gpu-check.json

clean:  ## remove runs and caches (keeps .venv)
	rm -rf runs _build .pytest_cache
