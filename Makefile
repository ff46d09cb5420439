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

# Default models (synthetic data only). Committed weights make the first `make demo` skip
# training. `make models` retrains them with the shipped recipe: far longer than 15 minutes on
# 2 cores (each model card in cards.json records its training time). A clone without weights
# gets the quick recipe before its first demo instead: under 15 minutes on 2 cores, with a
# progress bar, lower quality (BENCHMARKS.md, "Quick default models").
#
# Then, where ../shared/data is present, the real data: the detector is fine-tuned on the real
# Cholec80 boxes (a fixed split by image) with the synthetic first-stage frames kept in every
# epoch (--also-train synthetic), and the out-of-body model retrained with real in-body frames.
# Those weights fall under the data's non-commercial licence: they are registered in
# SURG_HOME's model registry, never written into the repository. Both are approved at once:
# each beats the default on the real data and is as good or better on synthetic cases (the
# detector: box mAP50 0.154 against 0.008 on the real split, 0.760 against 0.703 on the
# synthetic validation case). Fine-tuned on the real frames alone the detector reached 0.255
# on the real split, but it forgot the synthetic scenes (mAP50 0.00). The detector's 30 epochs
# took 65 minutes on 2 cores shared with other work; BENCHMARKS.md, "Real-data stage of make
# models" and "Real and synthetic frames together".
WEIGHTS_DIR := ml_models/default_weights
DEFAULT_WEIGHTS := $(addprefix $(WEIGHTS_DIR)/,out_of_body_model.pt phase_model.pt instrument_detector.pt)
REAL_DATA := ../shared/data

models: install
	$(BIN)/surg models train-defaults
	@if [ -d $(REAL_DATA)/cholec80-tools-yolo ]; then \
	  set -x; \
	  $(BIN)/surg train detector --data $(REAL_DATA)/cholec80-tools-yolo \
	    --model $(WEIGHTS_DIR)/instrument_detector.pt --also-train synthetic \
	    --epochs 30 --imgsz 320 --approve-as bootstrap && \
	  $(BIN)/surg train out-of-body --real-in-body $(REAL_DATA)/cholec80-tools-yolo \
	    --approve-as bootstrap; \
	else echo "no $(REAL_DATA)/cholec80-tools-yolo here: synthetic defaults only"; fi

$(DEFAULT_WEIGHTS): | install
	$(BIN)/surg models train-defaults --recipe quick --only $(basename $(notdir $@))

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
	# pipeline_speed.py --quick (one run) keeps the loop short; tracking_quality.py renders five
	# 3-minute cases once (about 3 minutes of its own on 2 cores).
	for f in bench/[!_]*.py; do case $$f in */pipeline_speed.py) a=--quick;; *) a=;; esac; \
		$(BIN)/python $$f $$a || exit 1; done

lint:
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format:
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .
