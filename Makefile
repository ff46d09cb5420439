# The README's commands. Everything installs into .venv (and deploy tools into .venv-tools).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
TOOLS := .venv-tools
export SURG_HOME ?= $(CURDIR)/.surg
# Ultralytics must never reach the network (weights, fonts, update checks).
export YOLO_OFFLINE := 1

.PHONY: install tools models demo test up bench lint format

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -e '.[dev]'
	touch $@

# Deployment linters (cdk-nag, cfn-lint, checkov, actionlint) pin packages that clash with
# Dagster's, so they live in their own environment.
tools: $(TOOLS)/.installed

$(TOOLS)/.installed: deploy/requirements-tools.txt
	test -x $(TOOLS)/bin/python || $(PY) -m venv $(TOOLS)
	$(TOOLS)/bin/pip install -r deploy/requirements-tools.txt
	touch $@

# Default models (synthetic data only). Committed weights make this a no-op on a fresh clone;
# `make models` retrains them from scratch: far longer than 15 minutes on 2 cores (the phase model
# alone took 1,202 s on 2026-12-02); each model card in cards.json records its training time.
DEFAULT_WEIGHTS := ml_models/default_weights/instrument_detector.pt

models: install
	$(BIN)/surg models train-defaults

$(DEFAULT_WEIGHTS):
	$(MAKE) models

demo: install $(DEFAULT_WEIGHTS)
	$(BIN)/surg demo

test: install $(if $(wildcard deploy/requirements-tools.txt),tools)
	$(BIN)/pytest

up: install
	mkdir -p $(SURG_HOME)/dagster
	test -f $(SURG_HOME)/dagster/dagster.yaml || cp dagster.yaml $(SURG_HOME)/dagster/dagster.yaml
	# The web app (http://127.0.0.1:8000) beside dagster dev (http://127.0.0.1:3000).
	$(BIN)/surg serve --host 127.0.0.1 --port 8000 & web=$$!; \
	DAGSTER_HOME=$(SURG_HOME)/dagster $(BIN)/dagster dev -w workspace.yaml; kill $$web

bench: install
	# pipeline_speed.py --quick (one run) keeps the whole loop under 20 minutes on 2 cores.
	for f in bench/[!_]*.py; do case $$f in */pipeline_speed.py) a=--quick;; *) a=;; esac; \
		$(BIN)/python $$f $$a || exit 1; done

lint:
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format:
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .
