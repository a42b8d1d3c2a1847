# Every target is one thing a user can do; `make help` lists them.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
FM_DEB := /usr/share/datasets/fashion-mnist

.PHONY: help setup data test book quick-model bench clean

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

book: quick-model  ## build the book (for now: the quick model; the book itself comes with its issue)
	@echo "The Jupyter Book is not built yet (see the book issue); 'make book' trains and evaluates a quick model for now."

bench: setup data  ## throughput and memory benchmark of the fashion-mnist config
	$(BIN)/python -m gclib.bench --config fashion-mnist --json runs/bench.json

clean:  ## remove runs and caches (keeps .venv)
	rm -rf runs _build .pytest_cache
