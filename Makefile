# FashionFlow: `make run` sets up and trains with the default profile; `make test` sets up and runs every check.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
DATA := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
PROFILE ?= configs/default.yaml
# Metaflow needs a user name; shells in containers and CI often have no $USER.
export USERNAME ?= $(or $(USER),fashionflow)

.PHONY: setup data browser run smoke test lint serve clean

setup: data $(VENV)/.installed

# The Debian package puts the real files where the loader looks first; without apt, the loader downloads them.
data:
	@test -f $(DATA) || (command -v apt-get >/dev/null && apt-get install -y -q dataset-fashion-mnist) \
		|| echo "dataset-fashion-mnist not installed: the flow will download Fashion-MNIST on first use"

# Debian's Chromium drives the demo page in the service's browser test.
browser:
	@command -v chromium >/dev/null || (command -v apt-get >/dev/null && apt-get install -y -q chromium chromium-driver) \
		|| echo "chromium not installed: the browser test will be skipped"

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e ".[dev]"
	touch $@

run: setup
	$(PY) flows/fashion_flow.py --config config $(PROFILE) run

smoke: setup
	$(PY) flows/fashion_flow.py --config config configs/smoke.yaml run

lint: setup
	$(VENV)/bin/ruff check fmnist serving flows tests benchmarks
	$(VENV)/bin/ruff format --check fmnist serving flows tests benchmarks
	$(VENV)/bin/mypy fmnist serving flows

test: setup browser lint
	$(PY) -m pytest --cov=fmnist --cov=serving --cov-report=term-missing --cov-report=xml --cov-fail-under=85

serve: setup
	$(VENV)/bin/fmnist-serve

clean:
	rm -rf .metaflow .pytest_cache .mypy_cache .ruff_cache .coverage coverage.xml
