# Every target is one thing a user can do; `make help` lists them.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
FM_DEB := /usr/share/datasets/fashion-mnist

.PHONY: help setup data test book models retrain-zoo quick-model bench clean
NB_OUT ?= book/executed
BETAS := 0 1 2 4 8 16 32 inf
# jupytext turns a notebook source (.py) into an .ipynb; papermill runs it with parameters.
NOTEBOOK = $(BIN)/jupytext --quiet --to ipynb -o $(NB_OUT)/$(1).source.ipynb notebooks/$(1).py && \
  $(BIN)/papermill --log-level WARNING -k python3 $(NB_OUT)/$(1).source.ipynb $(NB_OUT)/$(2).ipynb

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

test: setup data  ## run the test suite (CPU)
	$(BIN)/python -m pytest

quick-model: setup data  ## train a beta=8 GC on Fashion-MNIST (1 epoch, CPU) and print its test accuracy
	$(BIN)/python -m gclib.train --config fashion-mnist --beta 8 --epochs 1 --out runs/quick --resume --eval-test

models: setup data  ## run the training notebook once per beta (shipped models) and the zoo notebook: figures/table_models, fig_beta_tradeoff
	@mkdir -p $(NB_OUT)
	@for b in $(BETAS); do echo "notebooks/train_model.py, beta=$$b"; \
	  $(call NOTEBOOK,train_model,train_model_beta-$$b) -p beta $$b || { echo "notebook train_model (beta=$$b) failed: see $(NB_OUT)/train_model_beta-$$b.ipynb"; exit 1; }; done
	@echo "notebooks/models.py"; $(call NOTEBOOK,models,models) || { echo "notebook models failed: see $(NB_OUT)/models.ipynb"; exit 1; }

retrain-zoo: setup data  ## retrain every zoo model on this machine and ship it to checkpoints/ (hours on a CPU)
	@for name in $$($(BIN)/python -c "from gclib import zoo; print(' '.join(e.name for e in zoo.entries('fashion-mnist')))"); do \
	  $(BIN)/python -m gclib.zoo train $$name --out runs/zoo/$$name --resume && \
	  $(BIN)/python -m gclib.zoo publish $$name --run runs/zoo/$$name || exit 1; done

book: models  ## build the book (for now: the model-zoo notebooks and figures; the Jupyter Book comes with its issue)
	@echo "figures and tables in figures/, executed notebooks in $(NB_OUT)/"

bench: setup data  ## throughput and memory benchmark of the fashion-mnist config
	$(BIN)/python -m gclib.bench --config fashion-mnist --json runs/bench.json

clean:  ## remove runs and caches (keeps .venv)
	rm -rf runs _build .pytest_cache
