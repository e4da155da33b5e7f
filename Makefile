# persona-lab. `make help` lists the targets. Every target installs into .venv first
# when it is missing or older than requirements.lock / pyproject.toml.
.DEFAULT_GOAL := help
SHELL := /bin/bash
PY := .venv/bin/python
STAMP := .venv/.installed
METHOD ?= unified_lora
ARGS ?=
TRACKING ?= sqlite:///mlruns/mlflow.db
TRIALS ?=
WORKERS ?= 1
GPUS ?=
STORAGE ?=
PORT ?= 5000
SEEDS ?= 1
GRID ?= coarse
METHODS ?=

$(STAMP): requirements.lock pyproject.toml
	test -x $(PY) || python3 -m venv .venv
	$(PY) -m pip install -q --disable-pip-version-check -r requirements.lock
	$(PY) -m pip install -q --disable-pip-version-check --no-deps -e .
	touch $@

.PHONY: help setup run instrument study crossover results test lint format train sweep sweep-distributed-test promote data base report ui ui-check bench gpu-check clean
help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

setup: $(STAMP) ## install everything into .venv (torch 2.13.0 CPU wheel, pinned versions)

run: $(STAMP) ## main job: data -> base model -> no_adaptation, unified_lora, the instrument -> MLflow + table
	$(PY) -m research.cli run $(ARGS)

instrument: $(STAMP) ## unified_lora told the resolved settings and the raw preferences vs plain, next to the anchors
	$(PY) -m research.cli instrument $(ARGS)

crossover: $(STAMP) ## where personalization starts to beat unified: make crossover [GRID=full] [METHODS=a,b]
	$(PY) -m research.cli crossover --grid $(GRID) $(if $(METHODS),--methods $(METHODS)) $(ARGS)

results: $(STAMP) ## docs/results.md from the study's and the crossover's output (after make study / make crossover)
	$(PY) -m research.cli results

study: $(STAMP) ## every method at its defaults (reusing finished runs) + the report: make study [SEEDS=3] [METHODS=a,b]
	$(PY) -m research.cli study --seeds $(SEEDS) $(if $(METHODS),--methods $(METHODS)) $(ARGS)

test: $(STAMP) lint ## lint, then the test suite (what CI runs)
	$(PY) -m pytest -q

lint: $(STAMP) ## ruff check and format check; import-linter: the layers import one way (pyproject.toml)
	.venv/bin/ruff check research tests bench
	.venv/bin/ruff format --check research tests bench
	.venv/bin/lint-imports

format: $(STAMP) ## apply ruff fixes and formatting
	.venv/bin/ruff check --fix research tests bench
	.venv/bin/ruff format research tests bench

data: $(STAMP) ## generate the persona dataset into data/ (ARGS: key=value, e.g. personas=50)
	$(PY) -m research.cli data generate $(ARGS)

base: $(STAMP) ## reproduce the shipped base/ from code into models/base and compare (~25 min; never needed)
	$(PY) -m research.cli base $(ARGS)

train: $(STAMP) ## train + evaluate one method: make train METHOD=unified_lora ARGS="train.lr=1e-3"
	$(PY) -m research.cli train --method $(METHOD) $(ARGS)

sweep: $(STAMP) ## Optuna sweep: make sweep METHOD=constrained_lora [TRIALS=N] [WORKERS=W] [GPUS=0,1] [STORAGE=URL] [ARGS=...]
	$(PY) -m research.cli sweep --method $(METHOD) $(if $(TRIALS),--trials $(TRIALS)) --workers $(WORKERS) $(if $(GPUS),--gpus $(GPUS)) $(if $(STORAGE),--storage $(STORAGE)) $(ARGS)

sweep-distributed-test: $(STAMP) ## 2 sweep workers on one study via a real PostgreSQL + MLflow server on 127.0.0.1
	$(PY) -m pytest -q -m distributed

promote: $(STAMP) ## route personas to a registered model: make promote MODEL=per_persona_lora VERSION=1 [PERSONAS=p1,p2|all]
	$(PY) -m research.cli promote $(MODEL) $(VERSION) --personas $(or $(PERSONAS),all) $(ARGS)

ui: $(STAMP) ## MLflow UI on http://127.0.0.1:$(PORT), printing the runs-table URL (the study's metric columns)
	$(PY) -m research.cli ui --port $(PORT) tracking.uri=$(TRACKING) $(ARGS)

report: $(STAMP) ## the study's table + plots from MLflow -> reports/report.{md,html} (ARGS: run ids, --metric M)
	$(PY) -m research.cli report $(ARGS) --overrides tracking.uri=$(TRACKING)

ui-check: $(STAMP) ## the runs table and a two-method comparison in headless Chromium -> reports/ui/*.png
	$(PY) -m research.cli ui --check --port $(PORT) tracking.uri=$(TRACKING) $(ARGS)

BENCHMARKS := bench/bench.py bench/many_adapters.py bench/sweep_overhead.py bench/mfu.py bench/serving.py bench/cold_start.py
bench: $(STAMP) ## benchmarks: prints ratios, writes bench/results.json; each script runs even if another fails
	@failed=""; for script in $(BENCHMARKS); do $(PY) $$script $(ARGS) || failed="$$failed $$script"; done; \
	if [ -n "$$failed" ]; then echo "benchmarks failed:$$failed"; exit 1; fi

gpu-check: $(STAMP) ## one accelerator: LoRA tokens/s + MFU in bf16, 200 adapters vs unified, generation, memory -> bench/results_gpu.json
	$(PY) bench/gpu_check.py $(ARGS)

clean: ## remove generated data, models, caches and the MLflow store (keeps .venv and the shipped base/)
	rm -rf data models mlruns/mlflow.db mlruns/optuna.* mlruns/artifacts .pytest_cache
