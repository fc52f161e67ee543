# `make demo` and `make test` each create or reuse .venv, so a fresh machine needs nothing else.
VENV ?= .venv
PY := $(VENV)/bin/python
# The demo stays apart from real work: its data is not under the default data_dir, its runs go to
# their own experiment and its model to its own registered name, so it never becomes the champion
# that `predict` uses by default.
DEMO_DATA ?= demo/data
DEMO_PRESET ?= demo
DEMO_EXPERIMENT ?= potholes-demo
DEMO_MODEL ?= pothole-ensemble-demo
export NO_ALBUMENTATIONS_UPDATE := 1
export PATH := $(abspath $(VENV))/bin:$(PATH)

.PHONY: venv scale java demo test test-fast bench clean

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3.11 -m venv $(VENV) || python3 -m venv $(VENV)
	$(PY) -m pip install --upgrade --quiet pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

# The scale-out engines the tests exercise (issue 12): the `scale` extra from PyPI (pyspark,
# psycopg; the dev extra brings pgserver, whose PostgreSQL 16 binaries the tests start), then Java for Spark.
scale: $(VENV)/.scale java

$(VENV)/.scale: $(VENV)/.installed
	$(PY) -m pip install --quiet -e '.[dev,scale]'
	touch $@

# Spark 4 needs Java 17+ with jdk.incubator.vector. Found (JAVA_HOME, PATH, /usr/lib/jvm): nothing
# to do. Missing, as root with apt-get: Debian's headless OpenJDK. Otherwise the Spark tests skip
# (fail under CI=true) saying what to install.
java: $(VENV)/.scale
	@$(PY) -c "from potholes.scale.spark import find_java; print('Java for Spark:', find_java())" 2>/dev/null \
	|| if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing a Java runtime for Spark (Debian openjdk-17-jre-headless)"; \
		apt-get update -qq && { DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
			openjdk-17-jre-headless || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
			--no-install-recommends openjdk-21-jre-headless; } \
		&& $(PY) -c "from potholes.scale.spark import find_java; print('Java for Spark:', find_java())"; \
	else \
		echo "no Java 17+ for Spark: install one (sudo apt-get install openjdk-17-jre-headless); Spark tests will skip"; \
	fi

$(DEMO_DATA)/sample_submission.csv: | venv
	$(VENV)/bin/potholes synth $(DEMO_DATA)

# The whole pipeline on the synthetic set with the demo-sized budget, as one tracked run.
demo: venv $(DEMO_DATA)/sample_submission.csv
	$(VENV)/bin/mlflow run . --env-manager local --experiment-name $(DEMO_EXPERIMENT) -P data_dir=$(DEMO_DATA) \
		-P preset=$(DEMO_PRESET) -P registered_model=$(DEMO_MODEL) -P output=demo/submission.csv

# Two test processes (one per core here, at most 4): the end-to-end tests spend much of their time
# starting processes and servers, so the suite takes about a sixth less than in one process.
test: venv scale
	$(PY) -m pytest -q -rs -n auto --maxprocesses=4 --dist worksteal

test-fast: venv
	$(PY) -m pytest -q -m "not slow"

bench: venv
	for script in benchmarks/bench_*.py; do $(PY) $$script --quick || exit 1; done

clean:
	rm -rf mlruns mlflow.db optuna.db submission.csv potholes.csv demo
