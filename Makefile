# Two set-up commands on a fresh machine:  `make demo`  and  `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: install demo test test-fast lint

$(STAMP): pyproject.toml constraints/pinned.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# constraints/pinned.txt pins the tested versions, torch to its CPU wheel.
	$(PY) -m pip install -q -c constraints/pinned.txt -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# Builds the pico suite if it is missing, runs the demo spec on a local Ray, queries it.
demo: install
	$(VENV)/bin/ckptlab pico build
	$(VENV)/bin/ckptlab run specs/demo.yaml
	$(VENV)/bin/ckptlab query "SELECT model, step, round(value, 3) AS cross_entropy FROM results \
	  WHERE metric = 'cross_entropy' AND step IN (0, 64, 500, 1000) ORDER BY model, step"
	$(VENV)/bin/ckptlab query "SELECT model, task, shots, round(avg(value), 3) AS accuracy \
	  FROM results WHERE metric = 'accuracy' AND step >= 600 AND size = 'm' \
	  GROUP BY ALL ORDER BY task, shots"

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# Everything, slow tests included (~3.5 min on 2 cores once installed). CI runs exactly this.
test: lint
	$(VENV)/bin/pytest

# Quick iteration: skips tests marked slow (e.g. the one that starts a `ray start` cluster).
test-fast: lint
	$(VENV)/bin/pytest -m "not slow"
