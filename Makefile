# The pipeline, one target per stage. `make` alone lists the targets.
# Every stage target depends on `install`, so a fresh clone needs no other step.

.DEFAULT_GOAL := help
# Stages read what the one before wrote: never run two at once, even under make -j.
.NOTPARALLEL:
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
MAKEFLAGS += --no-print-directory

# ---- settings (override on the command line: make extract RAW_DIR=...) ----
DATA_VERSION ?= v1
RAW_DIR ?= data/raw/$(DATA_VERSION)
PROCESSED_DIR ?= data/processed/$(DATA_VERSION)
MAPPING ?= data/category_mapping.toml
UNKNOWN_LABEL ?=
STRICT ?=
KAGGLE_DATASET ?= lokeshparab/amazon-products-dataset
KAGGLE_PUSH_ID ?=
KAGGLE_TITLE ?=
KAGGLE_LICENSE ?=
KAGGLE_STAGING_DIR ?=
DRY_RUN ?=
PUBLIC ?=
IMAGE_SIZE ?=
RESIZE_MODE ?= keep-ratio
CONCURRENCY ?= 64
PER_HOST ?= 16
SHARD ?=
ALLOW_PRIVATE_ADDRESSES ?=
ALLOW_NETWORK ?=
USER_AGENT ?=
FETCH_ARGS ?=
MODEL ?= resnet50v2_pool
WEIGHTS ?= imagenet
EPOCHS ?= 10
FINE_TUNE_EPOCHS ?= 0
BATCH_SIZE ?= 32
RUN ?=
RUNS_DIR ?= develop/artifacts/runs
HOST ?= 127.0.0.1
PORT ?= 8501
MODEL_NAME ?= product_classifier
IMAGE ?=
REPORT_DIR ?= develop/artifacts/report
TRAIN_ARGS ?=
TENSORBOARD_PORT ?= 6006
NEW_DATA_VERSION ?= v2
REVIEW_DIR ?= label/reviews/$(DATA_VERSION)
REVIEW_PORT ?= 8765
DEMO_PORT ?= 8770
FOLDS ?= 5
EXTRAS ?=
PYTEST_ARGS ?=

PYTHON_BOOTSTRAP ?= python3
POETRY_VERSION := 2.5.1
TOOLS_DIR := .tools
POETRY := $(TOOLS_DIR)/bin/poetry
VENV := .venv
PY := $(VENV)/bin/python
empty :=
space := $(empty) $(empty)
INSTALL_STAMP := $(VENV)/.installed-$(or $(subst $(space),-,$(strip $(EXTRAS))),cpu)

# Quiet TensorFlow's start-up banner in every stage; errors still print.
export TF_CPP_MIN_LOG_LEVEL ?= 2

.PHONY: help install test test-fast lint format download kaggle-push extract merge relabel prepare
.PHONY: validate fetch merge-shards train evaluate export serve serve-check compare tensorboard
.PHONY: find-label-issues review apply-corrections report all demo clean

help: ## List the targets and what each one does
	@echo "Usage: make <target> [VARIABLE=value ...]"
	@echo
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  \033[36m%-19s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)
	@echo
	@echo "Variables: DATA_VERSION=$(DATA_VERSION) RAW_DIR=$(RAW_DIR) PROCESSED_DIR=$(PROCESSED_DIR)"
	@echo "           MAPPING=$(MAPPING) UNKNOWN_LABEL=$(UNKNOWN_LABEL) EXTRAS=$(EXTRAS)"
	@echo "           IMAGE_SIZE=$(IMAGE_SIZE) RESIZE_MODE=$(RESIZE_MODE) CONCURRENCY=$(CONCURRENCY)"
	@echo "           PER_HOST=$(PER_HOST) SHARD=$(SHARD) ALLOW_NETWORK=$(ALLOW_NETWORK)"
	@echo "           ALLOW_PRIVATE_ADDRESSES=$(ALLOW_PRIVATE_ADDRESSES)"
	@echo "           MODEL=$(MODEL) WEIGHTS=$(WEIGHTS) EPOCHS=$(EPOCHS) BATCH_SIZE=$(BATCH_SIZE) RUN=$(RUN)"

# ---- set-up ----

$(POETRY):
	$(PYTHON_BOOTSTRAP) -m venv $(TOOLS_DIR)
	$(TOOLS_DIR)/bin/pip install --quiet "poetry==$(POETRY_VERSION)"

# --compile writes bytecode at install time: stages then start fast even where
# PYTHONDONTWRITEBYTECODE is set, as it is on some CI machines.
$(INSTALL_STAMP): pyproject.toml poetry.lock | $(POETRY)
	$(POETRY) check --lock
	$(POETRY) install --no-interaction --compile $(if $(EXTRAS),--extras "$(EXTRAS)")
	@rm -f $(VENV)/.installed*
	@touch $@

install: $(INSTALL_STAMP) ## Create .venv with every dependency (idempotent; EXTRAS=gpu on a GPU VM)

# ---- checks ----

lint: install ## Check formatting, import order and flake8
	$(VENV)/bin/black --check --quiet .
	$(VENV)/bin/isort --check-only --quiet .
	$(VENV)/bin/flake8

format: install ## Rewrite files with black and isort
	$(VENV)/bin/isort --quiet .
	$(VENV)/bin/black --quiet .

test: install lint ## Run the whole test suite, slow end-to-end tests included
	$(PY) -m pytest $(PYTEST_ARGS)

test-fast: install ## Run the tests without the slow end-to-end ones
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

# ---- data preparation ----

download: install ## Fetch the Kaggle dataset into RAW_DIR with the Kaggle API
	$(PY) -m data.scripts.download --dataset "$(KAGGLE_DATASET)" --out-dir "$(RAW_DIR)"

KAGGLE_PUSH_ARGS = $(if $(KAGGLE_PUSH_ID),--dataset-id "$(KAGGLE_PUSH_ID)") \
	$(if $(KAGGLE_TITLE),--title "$(KAGGLE_TITLE)") \
	$(if $(KAGGLE_LICENSE),--license "$(KAGGLE_LICENSE)") \
	$(if $(KAGGLE_STAGING_DIR),--staging-dir "$(KAGGLE_STAGING_DIR)") \
	$(if $(filter 1 yes true,$(DRY_RUN)),--dry-run) $(if $(filter 1 yes true,$(PUBLIC)),--public)

kaggle-push: install ## Publish PROCESSED_DIR's images to Kaggle as KAGGLE_PUSH_ID (DRY_RUN=1: list only)
	$(PY) -m data.scripts.kaggle_push --processed-dir "$(PROCESSED_DIR)" \
		--data-version "$(DATA_VERSION)" $(strip $(KAGGLE_PUSH_ARGS))

extract: install ## Keep categories, image URL and origin of every CSV row under RAW_DIR
	$(PY) -m data.scripts.extract --raw-dir "$(RAW_DIR)" --out-dir "$(PROCESSED_DIR)" \
		$(if $(filter 1 yes true,$(STRICT)),--strict)

merge: install ## Merge extracted files, drop bad and duplicate URLs, then relabel
	$(PY) -m data.scripts.merge --processed-dir "$(PROCESSED_DIR)" --mapping "$(MAPPING)"
	$(MAKE) relabel

relabel: install ## Map main categories onto labels with MAPPING into products.parquet
	$(PY) -m data.scripts.relabel --processed-dir "$(PROCESSED_DIR)" --mapping "$(MAPPING)" \
		$(if $(UNKNOWN_LABEL),--unknown-label "$(UNKNOWN_LABEL)")

prepare: install ## Run extract, merge and relabel in one process (same outputs, faster)
	$(PY) -m data.scripts.prepare --raw-dir "$(RAW_DIR)" --out-dir "$(PROCESSED_DIR)" \
		--mapping "$(MAPPING)" $(if $(UNKNOWN_LABEL),--unknown-label "$(UNKNOWN_LABEL)") \
		$(if $(filter 1 yes true,$(STRICT)),--strict)

# ---- image collection ----

NETWORK_ARGS = --concurrency $(CONCURRENCY) --per-host $(PER_HOST) \
	$(if $(filter 1 yes true,$(ALLOW_PRIVATE_ADDRESSES)),--allow-private-addresses) \
	$(foreach network,$(ALLOW_NETWORK),--allow-network=$(network)) \
	$(if $(USER_AGENT),--user-agent "$(USER_AGENT)")

validate: install ## Survey the image URLs: reachable share, types and sizes per host
	$(PY) -m data.scripts.validate --processed-dir "$(PROCESSED_DIR)" $(NETWORK_ARGS)

fetch: install ## Download, check and store every image under PROCESSED_DIR/images/<label>/
	$(PY) -m data.scripts.fetch --processed-dir "$(PROCESSED_DIR)" $(NETWORK_ARGS) \
		$(if $(IMAGE_SIZE),--image-size=$(IMAGE_SIZE)) --resize-mode=$(RESIZE_MODE) \
		$(if $(SHARD),--shard=$(SHARD)) $(FETCH_ARGS)

merge-shards: install ## Combine the manifests of SHARD=i/n runs into manifest.parquet
	$(PY) -m data.scripts.fetch --processed-dir "$(PROCESSED_DIR)" --merge-shards

# ---- training ----

train: install ## Train MODEL on PROCESSED_DIR; prints RUN=<run folder> (reruns resume)
	$(PY) -m train.train --processed-dir "$(PROCESSED_DIR)" --model "$(MODEL)" \
		--weights "$(WEIGHTS)" --image-size $(or $(IMAGE_SIZE),224) --epochs $(EPOCHS) \
		--fine-tune-epochs $(FINE_TUNE_EPOCHS) --batch-size $(BATCH_SIZE) \
		--runs-dir "$(RUNS_DIR)" $(TRAIN_ARGS)

evaluate: install ## Score RUN's model on its test split (metrics, confusion matrix, mistakes)
	@test -n "$(RUN)" || { echo "make evaluate needs RUN=<run folder>; see 'make compare'"; exit 2; }
	$(PY) -m train.evaluate --run "$(RUN)"

export: install ## Write RUN's SavedModel, TFLite files, labels and model card into RUN/export/
	@test -n "$(RUN)" || { echo "make export needs RUN=<run folder>; see 'make compare'"; exit 2; }
	$(PY) -m deploy.export --run "$(RUN)"

serve: install ## Serve RUN's exported model on HOST:PORT with TF Serving's REST API (SIGTERM stops)
	@test -n "$(RUN)" || { echo "make serve needs RUN=<run folder>; see 'make compare'"; exit 2; }
	$(PY) -m deploy.serve --run "$(RUN)" --host "$(HOST)" --port $(PORT) \
		--model-name "$(MODEL_NAME)"

serve-check: install ## Start the server for RUN, send IMAGE (default a test image), check, stop
	@test -n "$(RUN)" || { echo "make serve-check needs RUN=<run folder>; see 'make compare'"; exit 2; }
	$(PY) -m deploy.smoke --run "$(RUN)" $(if $(IMAGE),--image "$(IMAGE)")

compare: install ## Print a table of every run under RUNS_DIR, side by side
	$(PY) -m train.compare --runs-dir "$(RUNS_DIR)"

tensorboard: install ## Serve TensorBoard for RUNS_DIR on 127.0.0.1:TENSORBOARD_PORT
	$(VENV)/bin/tensorboard --logdir "$(RUNS_DIR)" --host 127.0.0.1 --port $(TENSORBOARD_PORT)

# ---- label correction ----

find-label-issues: install ## Rank likely label errors and conflicting duplicates into REVIEW_DIR
	$(PY) -m label.find_issues --processed-dir "$(PROCESSED_DIR)" --model "$(MODEL)" \
		--weights "$(WEIGHTS)" --image-size $(or $(IMAGE_SIZE),224) --folds $(FOLDS) \
		--batch-size $(BATCH_SIZE) --out "$(REVIEW_DIR)/candidates.csv"

review: install ## Review the candidates in a web page on 127.0.0.1:REVIEW_PORT (Ctrl-C stops it)
	$(PY) -m label.review --candidates "$(REVIEW_DIR)/candidates.csv" \
		--processed-dir "$(PROCESSED_DIR)" --port $(REVIEW_PORT)

apply-corrections: install ## Write data/processed/NEW_DATA_VERSION from DATA_VERSION and the review
	$(PY) -m label.apply --processed-dir "$(PROCESSED_DIR)" \
		--decisions "$(REVIEW_DIR)/decisions.jsonl" --out "data/processed/$(NEW_DATA_VERSION)"

# ---- report ----

report: install ## Draw what every stage wrote so far: PNGs and one self-contained REPORT_DIR/index.html
	$(PY) -m visualise.report --processed-dir "$(PROCESSED_DIR)" --runs-dir "$(RUNS_DIR)" \
		$(if $(RUN),--run "$(RUN)") --review-dir "$(REVIEW_DIR)" \
		--applied-dir "data/processed/$(NEW_DATA_VERSION)" --out "$(REPORT_DIR)"

# ---- the whole chain ----

# The variables `make all` hands to every stage; a change to one reruns the stages it feeds.
ALL_VARIABLES := DATA_VERSION RAW_DIR PROCESSED_DIR MAPPING UNKNOWN_LABEL KAGGLE_DATASET \
	IMAGE_SIZE RESIZE_MODE CONCURRENCY PER_HOST FETCH_ARGS MODEL WEIGHTS EPOCHS \
	FINE_TUNE_EPOCHS BATCH_SIZE RUNS_DIR TRAIN_ARGS REVIEW_DIR FOLDS REPORT_DIR

all: install ## Every stage on the real dataset, download to report; reruns skip finished stages
	$(PY) -m data.scripts.pipeline $(foreach name,$(ALL_VARIABLES),"$(name)=$($(name))")

demo: install ## Run every stage on a generated catalogue served on 127.0.0.1:DEMO_PORT
	$(PY) -m data.scripts.demo --port "$(DEMO_PORT)"

clean: ## Remove processed data of DATA_VERSION (raw downloads are kept)
	rm -rf "$(PROCESSED_DIR)"
