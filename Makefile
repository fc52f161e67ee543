# `make demo` and `make test` each create or reuse .venv, so a fresh machine needs nothing else.
VENV ?= .venv
PY := $(VENV)/bin/python
DEMO_DATA ?= data/demo
PRESET ?= auto
export NO_ALBUMENTATIONS_UPDATE := 1
export PATH := $(abspath $(VENV))/bin:$(PATH)

.PHONY: venv demo test test-fast bench clean

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3.11 -m venv $(VENV) || python3 -m venv $(VENV)
	$(PY) -m pip install --upgrade --quiet pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

$(DEMO_DATA)/sample_submission.csv: | venv
	$(VENV)/bin/potholes synth $(DEMO_DATA)

# The main job on the embedded synthetic default: the whole pipeline as one tracked run.
demo: venv $(DEMO_DATA)/sample_submission.csv
	$(VENV)/bin/mlflow run . --env-manager local --experiment-name potholes -P data_dir=$(DEMO_DATA) -P preset=$(PRESET)

test: venv
	$(PY) -m pytest -q

test-fast: venv
	$(PY) -m pytest -q -m "not slow"

bench: venv
	for script in benchmarks/bench_*.py; do $(PY) $$script --quick || exit 1; done

clean:
	rm -rf mlruns mlflow.db optuna.db submission.csv
