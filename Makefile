# Two commands on a fresh machine: `make demo` and `make test` (see README).
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DEMO_DATA ?= data/demo
LAKE ?= lake
STAMP := $(VENV)/.installed
TORCH_VERSION ?= 2.13.0

# The pyspark 3.5 leg (EMR 7.x, Databricks LTS before 16): pyspark 3.5 in its own venv, every other package
# from $(VENV) through a .pth that comes after its own site-packages (no second copy of the stack).
SPARK35_VENV ?= .venv-spark35
SPARK35_VERSION ?= 3.5.5
SPARK35_STAMP := $(SPARK35_VENV)/.installed-$(SPARK35_VERSION)
SPARK35_TESTS ?= tests/test_ingest.py tests/test_pairs_panel.py tests/test_s3_pipeline.py tests/test_stream.py
# The executors' environment (venv-pack archive, see infra/dist/build_env.py): DIST_PYTHON is the interpreter
# the executors run; DIST_FLAGS=--portable copies it and its stdlib into the archive (nodes without it).
DIST_ARCHIVE ?= dist/stlake-env.tar.gz
DIST_PYTHON ?= $(shell $(PY) -c 'import sys; print(sys._base_executable)' 2>/dev/null)
DIST_FLAGS ?=

.PHONY: venv venv-spark35 demo demo-s3 test test-slow test-all test-spark35 test-cluster dist dist-emr lint bench \
        terraform-check notebooks-docs clean

venv: $(STAMP)

# 1. torch first, pinned to the CPU build (a bare `torch` requirement pulls GBs of CUDA wheels).
# 2. the package with its pins (setup.py); torch is already satisfied, so it is left alone.
# 3. petastorm 0.13.1 without its declared `setuptools<70` (it never imports setuptools; that pin
#    would make pip swap torch for an older CUDA build). Its real dependencies come from [stream].
# 4. the driver JVM's class archive (stlake/jvmstart.py): every later Spark session starts faster.
$(STAMP): setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet "torch==$(TORCH_VERSION)"
	$(PY) -m pip install --quiet -e ".[stream,dev]"
	$(PY) -m pip install --quiet --no-deps "petastorm==0.13.1"
	$(PY) -c "import stlake, pyspark, deltalake, petastorm.pytorch, torch, cv2; \
	  assert torch.__version__.startswith('$(TORCH_VERSION)'), torch.__version__"
	$(PY) -m stlake.jvmstart || echo "(the driver JVM starts without a class archive)"
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

venv-spark35: $(SPARK35_STAMP)

$(SPARK35_STAMP): $(STAMP)
	rm -rf $(SPARK35_VENV)
	$(PY) -m venv $(SPARK35_VENV)
	$(SPARK35_VENV)/bin/python -m pip install --quiet --no-deps "pyspark==$(SPARK35_VERSION)" "py4j==0.10.9.7"
	printf '%s\n%s\n' "$(CURDIR)/lib" "$$($(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" \
	  > "$$($(SPARK35_VENV)/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/zz_stlake_venv.pth"
	ln -sf "$(abspath $(VENV))/bin/weed" $(SPARK35_VENV)/bin/weed
	$(SPARK35_VENV)/bin/python -c "import pyspark, stlake, deltalake; assert pyspark.__version__ == '$(SPARK35_VERSION)'"
	touch $(SPARK35_STAMP)

# The core subset (ingest, SQL on both routes, pairs, hvg, stream) on pyspark 3.5.
test-spark35: venv-spark35
	$(SPARK35_VENV)/bin/python -m pytest -m "not slow" -q $(SPARK35_TESTS)

# A real standalone cluster (master + two worker JVMs): the S3 pipeline, a killed executor, the archive.
test-cluster: venv dist
	$(PY) -m pytest -q tests/test_cluster.py tests/test_dist.py

dist: $(DIST_ARCHIVE)

$(DIST_ARCHIVE): $(STAMP) setup.py infra/dist/build_env.py $(shell find lib/stlake -name '*.py')
	$(PY) infra/dist/build_env.py --out $(DIST_ARCHIVE) --python "$(DIST_PYTHON)" $(DIST_FLAGS)

# The same archive for EMR Serverless (Amazon Linux 2023, its own CPython 3.11, the pins of `make dist`).
dist-emr: dist
	docker buildx build --platform linux/amd64 -f infra/terraform/env/Dockerfile --output type=local,dest=dist/emr .

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
	rm -rf $(VENV) $(SPARK35_VENV) $(DEMO_DATA) $(LAKE) .pytest_cache build dist
