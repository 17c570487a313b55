# FashionFlow: `make run` sets up and trains with the default profile; `make test` sets up and runs every check.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
DATA := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
PROFILE ?= configs/default.yaml
# The hashed lock of every dependency (runtime, serve, track, dev); `make lock` refreshes it from pyproject.toml.
LOCK := requirements/lock.txt
PIP_TOOLS := pip-tools==7.6.2
# Metaflow needs a user name; shells in containers and CI often have no $USER.
export USERNAME ?= $(or $(USER),fashionflow)

.PHONY: setup data browser wrk lock run smoke score card test lint docs serve clean

setup: data $(VENV)/.installed

# The Debian package puts the real files where the loader looks first; without apt, the loader downloads them.
data:
	@test -f $(DATA) || (command -v apt-get >/dev/null && apt-get install -y -q dataset-fashion-mnist) \
		|| echo "dataset-fashion-mnist not installed: the flow will download Fashion-MNIST on first use"

# Debian's Chromium drives the demo page in the service's browser test.
browser:
	@command -v chromium >/dev/null || (command -v apt-get >/dev/null && apt-get install -y -q chromium chromium-driver) \
		|| echo "chromium not installed: the browser test will be skipped"

# Exactly the locked versions, every file checked against its hash, then the project itself (editable, no deps).
# A new lock or pyproject.toml reinstalls.
$(VENV)/.installed: pyproject.toml $(LOCK)
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q --require-hashes -r $(LOCK)
	$(VENV)/bin/pip install -q --no-deps -e .
	touch $@

# Re-resolve the newest versions pyproject.toml allows (torch and torchvision stay as requirements/torch.txt pins
# them) for Python 3.11, with the sha256 of every file of every release. Commit the result; see docs/environment.md.
# `make lock UPGRADE=0` keeps the locked versions and only adds or drops what pyproject.toml changed.
# pip-compile's closing warning about `fashionflow` is expected: `dev` names the project's own extras, and the
# project is installed from the working tree, never from the lock.
lock: $(VENV)/.installed
	$(VENV)/bin/pip install -q "$(PIP_TOOLS)"
	CUSTOM_COMPILE_COMMAND="make lock" $(VENV)/bin/pip-compile --quiet $(if $(filter 0,$(UPGRADE)),,--upgrade) \
		--extra dev --constraint requirements/torch.txt --generate-hashes --strip-extras \
		--no-allow-unsafe --unsafe-package fashionflow \
		--no-emit-index-url --no-emit-find-links --no-emit-trusted-host \
		--output-file $(LOCK) pyproject.toml

run: setup
	$(PY) flows/fashion_flow.py --config config $(PROFILE) run

smoke: setup
	$(PY) flows/fashion_flow.py --config config configs/smoke.yaml run

# Score a catalogue with the model of the run tagged `production` (flows/score_flow.py):
#   make score INPUT=<folder | list file | s3://prefix> [SCORE_PROFILE=configs/score/batch.yaml] [SCORE_ARGS="--output out/"]
SCORE_PROFILE ?= configs/score/default.yaml
score: setup
	@test -n "$(INPUT)" || (echo "usage: make score INPUT=<folder | list file | s3://prefix>" && exit 2)
	$(PY) flows/score_flow.py --config config $(SCORE_PROFILE) run --input "$(INPUT)" $(SCORE_ARGS)

# Style, types, the import rules between the library's rooms (pyproject.toml's [tool.importlinter];
# docs/architecture.md), and the docs site built strictly: a broken link or a missing anchor fails.
lint: setup
	$(VENV)/bin/ruff check fmnist serving registry flows tests benchmarks data
	$(VENV)/bin/ruff format --check fmnist serving registry flows tests benchmarks data
	$(VENV)/bin/mypy fmnist serving registry flows
	$(VENV)/bin/lint-imports
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --quiet --site-dir .site

# A step's card as an HTML file under cards/, for a machine without a browser; the end steps print this line:
#   make card RUN=<run-id> [STEP=evaluate] [FLOW=fashion | promote | score]
# RUN may be the run id or FashionFlow/<run-id>; STEP defaults to the flow's report (evaluate, decide, join).
FLOW ?= fashion
CARD_RUN = $(lastword $(subst /, ,$(RUN)))
CARD_STEP = $(or $(STEP),$(if $(filter promote,$(FLOW)),decide,$(if $(filter score,$(FLOW)),join,evaluate)))
CARD_FLOW = $(if $(filter promote,$(FLOW)),PromoteFlow,$(if $(filter score,$(FLOW)),ScoreFlow,FashionFlow))
CARD_FILE = cards/$(CARD_FLOW)-$(CARD_RUN)-$(CARD_STEP).html
# Metaflow looks for the run in the `.metaflow` folder of the working directory, where `make run` put it; the
# repository's paths are absolute, so `make -f <repo>/Makefile card ...` also works where other runs live.
REPO := $(patsubst %/,%,$(dir $(abspath $(lastword $(MAKEFILE_LIST)))))
CARD_PY = $(if $(filter /%,$(PY)),$(PY),$(REPO)/$(PY))
card:
	@test -n "$(RUN)" || (echo "usage: make card RUN=<run-id> [STEP=<step>] [FLOW=fashion|promote|score]" && exit 2)
	@test -f $(REPO)/flows/$(FLOW)_flow.py || (echo "FLOW=$(FLOW): no flows/$(FLOW)_flow.py (fashion, promote or score)" && exit 2)
	@test -x $(CARD_PY) || (echo "no $(CARD_PY): run make setup (or make run) first" && exit 2)
	@mkdir -p cards
	$(CARD_PY) $(REPO)/flows/$(FLOW)_flow.py card get $(CARD_RUN)/$(CARD_STEP) $(CARD_FILE)
	@echo "card written to $(CARD_FILE)"

# Debian's wrk, the native load generator of benchmarks/serve_wrk.py (its quick mode runs in the tests).
wrk:
	@command -v wrk >/dev/null || (command -v apt-get >/dev/null && apt-get install -y -q wrk) \
		|| echo "wrk not installed: the wrk load benchmark's test will be skipped"

test: setup browser wrk lint
	$(PY) -m pytest --cov=fmnist --cov=serving --cov-report=term-missing --cov-report=xml --cov-fail-under=85

serve: setup
	$(VENV)/bin/fmnist-serve

# The docs site, served with live reload at http://127.0.0.1:8001 while editing docs/.
docs: setup
	$(VENV)/bin/mkdocs serve --dev-addr 127.0.0.1:8001

clean:
	rm -rf .metaflow .pytest_cache .mypy_cache .ruff_cache .coverage coverage.xml .site
