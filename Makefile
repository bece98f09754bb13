# One-command set-up on a fresh machine: `make report` (main job) and `make test` (tests).
# Both create .venv, install gfverify with its dependencies, then run.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The torch/torchvision pair known to install and work together on the project's machines.
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1

.PHONY: install check report test lint bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH_SPEC)
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

install: $(VENV)/.installed

check: install
	$(VENV)/bin/gfverify check

report: install
	$(VENV)/bin/gfverify report

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: lint
	HYPOTHESIS_PROFILE=ci $(PY) -m pytest -n 2 -q -p no:cacheprovider

bench: install
	$(PY) -m benchmarks

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis
