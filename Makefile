# Two commands on a fresh machine: `make demo` and `make test` (see README).
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DEMO_DATA ?= data/demo
LAKE ?= lake
STAMP := $(VENV)/.installed
TORCH_VERSION ?= 2.13.0

.PHONY: venv demo demo-s3 test test-slow test-all lint bench terraform-check notebooks-docs clean

venv: $(STAMP)

# 1. torch first, pinned to the CPU build (a bare `torch` requirement pulls GBs of CUDA wheels).
# 2. the package with its pins (setup.py); torch is already satisfied, so it is left alone.
# 3. petastorm 0.13.1 without its declared `setuptools<70` (it never imports setuptools; that pin
#    would make pip swap torch for an older CUDA build). Its real dependencies come from [stream].
$(STAMP): setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet "torch==$(TORCH_VERSION)"
	$(PY) -m pip install --quiet -e ".[stream,dev]"
	$(PY) -m pip install --quiet --no-deps "petastorm==0.13.1"
	$(PY) -c "import stlake, pyspark, deltalake, petastorm.pytorch, torch, cv2; \
	  assert torch.__version__.startswith('$(TORCH_VERSION)'), torch.__version__"
	touch $(STAMP)

demo: venv
	rm -rf $(DEMO_DATA) $(LAKE)
	$(PY) -m stlake.cli synth --out $(DEMO_DATA) --size small --corrupt
	$(PY) -m stlake.cli ingest --source $(DEMO_DATA)/manifest.csv --lake $(LAKE) --allow-rejects
	$(PY) -m stlake.demo --lake $(LAKE)

demo-s3: venv
	rm -rf $(DEMO_DATA)
	$(PY) -m stlake.cli synth --out $(DEMO_DATA) --size small --corrupt
	$(PY) -m stlake.demo --s3 $(DEMO_DATA)

test: venv
	$(PY) -m pytest -m "not slow" -q

lint: venv
	$(VENV)/bin/ruff check lib jobs bench tests
	$(VENV)/bin/mypy

test-slow: venv
	$(PY) -m pytest -m slow -q

test-all: venv
	$(PY) -m pytest -q

bench: venv
	$(PY) bench/bench_ingest.py
	$(PY) bench/bench_stream.py
	$(PY) bench/bench_resolution.py
	$(PY) bench/bench_png.py
	$(PY) bench/bench_corpus.py
	$(PY) bench/bench_visiumhd.py

# Executed copies of the notebooks (outputs and figures) for readers of the repository; the stripped
# notebooks/*.ipynb stay the source. A few minutes on two cores.
notebooks-docs: venv
	$(PY) notebooks/execute.py --out docs/notebooks

terraform-check:
	bash infra/terraform/check.sh

clean:
	rm -rf $(VENV) $(DEMO_DATA) $(LAKE) .pytest_cache
