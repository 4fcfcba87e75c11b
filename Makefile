# Two set-up commands on a fresh machine:  `make demo`  and  `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: install demo test test-slow test-all lint reliability benchmarks

$(STAMP): pyproject.toml constraints/pinned.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# constraints/pinned.txt pins the tested versions; its first lines say which torch build
	# a machine gets (PyPI's is the CUDA build on Linux x86_64: 2.74 GB of wheels).
	# [bench]: lm-evaluation-harness for the lm_eval analysis (the demo runs it).
	$(PY) -m pip install -q -c constraints/pinned.txt -e '.[dev,bench]'
	touch $(STAMP)

install: $(STAMP)

# Builds the pico suite if it is missing, runs the demo spec on a local Ray, queries it.
demo: install
	$(VENV)/bin/ckptlab pico build
	$(VENV)/bin/ckptlab run specs/demo.yaml --report
	$(VENV)/bin/ckptlab query "SELECT model, step, round(value, 3) AS cross_entropy FROM results \
	  WHERE metric = 'cross_entropy' AND step IN (0, 64, 500, 1000) ORDER BY model, step"
	$(VENV)/bin/ckptlab query "SELECT model, task, shots, round(avg(value), 3) AS accuracy \
	  FROM results WHERE metric = 'accuracy' AND step >= 600 AND size = 'm' \
	  GROUP BY ALL ORDER BY task, shots"
	$(VENV)/bin/ckptlab query "SELECT model, task, step, round(value, 3) AS acc FROM results \
	  WHERE analysis = 'lm_eval' AND metric = 'acc' AND step IN (0, 1000) ORDER BY task, model, step"

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# The default test run: every test not marked slow. CI runs this, then `make test-slow`.
test: lint
	$(VENV)/bin/pytest -m "not slow"

# The tests that start real Ray clusters, MLflow servers and kill processes (fault injection).
test-slow: install
	$(VENV)/bin/pytest -m slow

test-all: test test-slow

# The fault, bad-input and security tests, and RELIABILITY.md written from their results.
reliability: install
	$(VENV)/bin/pytest tests/test_faults.py tests/test_bad_specs.py tests/test_security.py \
	  tests/test_local_ray.py --reliability-report RELIABILITY.md

# Every benchmark section of BENCHMARKS.md, regenerated on this machine (~45 min on 2 cores);
# `$(PY) bench/run_all.py NAME...` refreshes single sections.
benchmarks: install
	$(PY) bench/run_all.py
