# Two commands on a fresh machine: `make demo` and `make test` (see README).
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DEMO_DATA ?= data/demo
LAKE ?= lake
STAMP := $(VENV)/.installed

.PHONY: venv demo demo-s3 test test-slow test-all bench terraform-check clean

venv: $(STAMP)

# torch first, pinned to the CPU build (a plain `torch` requirement would pull CUDA wheels);
# then the package with its pins (setup.py). pip warns that torch wants setuptools>=77 while
# petastorm needs <70: torch only needs setuptools to build C++ extensions, which we never do.
$(STAMP): setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet "torch==2.13.0"
	$(PY) -m pip install --quiet -e ".[stream,dev]"
	$(PY) -c "import stlake, pyspark, deltalake, petastorm, torch, cv2"
	touch $(STAMP)

demo: venv
	rm -rf $(DEMO_DATA) $(LAKE)
	$(PY) -m stlake.cli synth --out $(DEMO_DATA) --size small --corrupt
	$(PY) -m stlake.cli ingest --source $(DEMO_DATA)/manifest.csv --lake $(LAKE)
	$(PY) -m stlake.demo --lake $(LAKE)

test: venv
	$(PY) -m pytest -m "not slow" -q

test-slow: venv
	$(PY) -m pytest -m slow -q

test-all: venv
	$(PY) -m pytest -q

bench: venv
	$(PY) bench/bench_ingest.py

terraform-check:
	bash infra/terraform/check.sh

clean:
	rm -rf $(VENV) $(DEMO_DATA) $(LAKE) .pytest_cache
