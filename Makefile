# One-command set-up on a fresh machine: `make report` (main job) and `make test` (tests).
# Both create .venv, install gfverify with its dependencies, then run.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The torch/torchvision pair known to install and work together on the project's machines.
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1

# Fashion-MNIST (real images, tests/test_data_fashion.py's end-to-end test, experiments/
# table_fashion.toml, the `real` scale): Debian's dataset-fashion-mnist puts the four idx .gz
# files in $(FASHION_DIR). Installed with apt-get where apt exists (sudo when not root);
# elsewhere a note says what to do, and the tests that need the files are skipped.
FASHION_DIR ?= /usr/share/datasets/fashion-mnist
SUDO := $(shell [ "$$(id -u)" -eq 0 ] || echo sudo)
WORKERS ?= 2

.PHONY: install fashion-data check report test lint bench clean table-fashion

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH_SPEC)
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

install: $(VENV)/.installed

fashion-data:
	@if [ -f "$(FASHION_DIR)/train-images-idx3-ubyte.gz" ]; then \
	  :; \
	elif command -v apt-get >/dev/null 2>&1; then \
	  echo "installing Fashion-MNIST: $(SUDO) apt-get install dataset-fashion-mnist"; \
	  $(SUDO) apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1 \
	    || { $(SUDO) apt-get update -qq >/dev/null 2>&1 \
	         && $(SUDO) apt-get install -y -qq dataset-fashion-mnist >/dev/null; } \
	    || echo "NOTE: could not install dataset-fashion-mnist with apt-get; Fashion-MNIST" \
	         "runs need it (or: gfverify run ... --download, or the four idx files under" \
	         "data/fashion-mnist); its tests are skipped"; \
	else \
	  echo "NOTE: no apt-get here, so Fashion-MNIST is not installed. Put the four idx files" \
	       "(train/t10k images/labels, .gz or not) under data/fashion-mnist, or pass --download" \
	       "(needs a network). Tests that need the files are skipped."; \
	fi

check: install
	$(VENV)/bin/gfverify check

report: install fashion-data
	$(VENV)/bin/gfverify report

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: lint fashion-data
	HYPOTHESIS_PROFILE=ci $(PY) -m pytest -n 2 -q -p no:cacheprovider

bench: install
	$(PY) -m benchmarks

# Table 1 on Fashion-MNIST (experiments/table_fashion.toml): resumable; WORKERS=1 on a busy box.
table-fashion: install fashion-data
	WORKERS=$(WORKERS) GFVERIFY=$(VENV)/bin/gfverify sh reports/real/run_table.sh

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis
