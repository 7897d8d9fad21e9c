# facetrain tasks. `make help` lists them.
VENV ?= .venv
PYTHON ?= $(VENV)/bin/python
PYTEST_ARGS ?=
BENCH_ARGS ?=

.PHONY: help install test test-fast lint format train evaluate export bench clean clean-logs

help: ## Show this help
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  %-12s %s\n", $$1, $$2}'

install: ## Create .venv and install facetrain (editable) with its test tools
	test -x $(PYTHON) || python3 -m venv $(VENV)
	$(PYTHON) -m pip install --upgrade pip
	$(PYTHON) -m pip install -e ".[dev]"

test: ## Run the whole test suite (unit + end-to-end; about 12 minutes on 2 CPU cores)
	$(PYTHON) -m pytest $(PYTEST_ARGS)

test-fast: ## Unit tests only (no subprocess training runs)
	$(PYTHON) -m pytest -m "not slow and not ddp" $(PYTEST_ARGS)

lint: ## ruff lint and format check
	$(PYTHON) -m ruff check src tests scripts train.py evaluate.py export.py
	$(PYTHON) -m ruff format --check src tests scripts train.py evaluate.py export.py

format: ## Apply ruff fixes and formatting
	$(PYTHON) -m ruff check --fix src tests scripts train.py evaluate.py export.py
	$(PYTHON) -m ruff format src tests scripts train.py evaluate.py export.py

train: ## Train with the default config (synthetic data, resnet18, cam-softmax)
	$(PYTHON) train.py

evaluate: ## Evaluate a checkpoint: make evaluate CKPT=logs/train/runs/<time>/checkpoints/last.ckpt
	$(PYTHON) evaluate.py ckpt_path=$(CKPT)

export: ## Export a checkpoint to ONNX (parity-checked): make export CKPT=<ckpt> [FORMAT=torchscript|safetensors]
	$(PYTHON) export.py ckpt_path=$(CKPT) format=$(or $(FORMAT),onnx)

bench: ## All benchmarks, side by side ratios (BENCH_ARGS="--quick"); writes bench_results/*.json
	$(PYTHON) scripts/bench_heads.py $(BENCH_ARGS)
	$(PYTHON) scripts/bench_verification.py $(BENCH_ARGS)
	$(PYTHON) scripts/bench_loader.py $(BENCH_ARGS)
	$(PYTHON) scripts/bench_index_memory.py $(BENCH_ARGS)
	$(PYTHON) scripts/bench_train.py $(BENCH_ARGS)
	$(PYTHON) scripts/bench_inference.py $(BENCH_ARGS)
	$(PYTHON) scripts/bench_ijb.py $(BENCH_ARGS)
	$(PYTHON) scripts/bench_classifier.py $(BENCH_ARGS)

clean: ## Remove caches
	rm -rf .pytest_cache .ruff_cache build src/*.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +

clean-logs: ## Remove run directories under logs/
	rm -rf logs/*

.PHONY: table-synthetic
table-synthetic: ## Example paper tables on synthetic faces (~12 min on 2 CPU cores) -> docs/tables/
	rm -rf logs/paper/camsoftmax_heads_synthetic logs/paper/camsoftmax_label_noise_synthetic
	$(PYTHON) train.py paper=camsoftmax_heads_synthetic hydra.sweep.dir=logs/paper/camsoftmax_heads_synthetic
	$(PYTHON) train.py paper=camsoftmax_label_noise_synthetic \
		hydra.sweep.dir=logs/paper/camsoftmax_label_noise_synthetic
	$(PYTHON) scripts/make_table.py logs/paper/camsoftmax_heads_synthetic --out docs/tables
	$(PYTHON) scripts/make_table.py logs/paper/camsoftmax_label_noise_synthetic --out docs/tables
