# retrieval-kd: `make demo` and `make test` do all set-up on a fresh machine.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU wheel of torch (on these machines' disk). An unpinned torch would pull several GB of CUDA.
# Elsewhere: make install TORCH_SPEC=torch==2.13.0 PIP_TORCH_ARGS="--index-url https://download.pytorch.org/whl/cpu"
TORCH_SPEC ?= torch==2.13.0
PIP_TORCH_ARGS ?=
PYTEST_ARGS ?=

# The offline mirror of the datasets, when it exists beside the checkout.
MIRROR_DIR := $(abspath ../shared/data)
ifneq ($(wildcard $(MIRROR_DIR)),)
export RKD_DATA_MIRROR ?= $(MIRROR_DIR)
endif

.PHONY: install test test-slow demo lint clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(PIP_TORCH_ARGS) "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e ".[dev]"
	$(PY) -c "import torch, faiss, ranx, bm25s, sentence_transformers; print('installed: torch', torch.__version__)"
	touch $@

test: install
	$(PY) -m pytest $(PYTEST_ARGS)

test-slow: install
	$(PY) -m pytest -m slow $(PYTEST_ARGS)

demo: install
	$(PY) benchmarks/bm25_baseline.py

lint: install
	$(VENV)/bin/ruff check retrieval_kd tests benchmarks

clean:
	rm -rf $(VENV) data/cache indexes/bm25 .pytest_cache
