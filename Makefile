# fedseg: `make demo` and `make test` each set up .venv on first use, then run.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

# Python keeps compiled modules, and pytest its rewritten test modules, in __pycache__ (which git
# ignores). Where PYTHONDONTWRITEBYTECODE is set, as on our CI machine, every test run and every
# server or agent process the tests and the demo start compiled them all again: about 10 CPU s
# per pytest process on 2 cores.
unexport PYTHONDONTWRITEBYTECODE

.PHONY: demo test test-fast test-postgres test-ray test-fuzz test-containers images lint bench bench-all install clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip

# torch first and pinned: pip takes the CPU wheel on disk; anything else pulls a CUDA build.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install torch==2.13.0
	$(BIN)/pip install -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/fedseg demo

# Everything (as CI runs it).
test: $(STAMP)
	$(BIN)/python -m pytest -q

# The tier to run while developing: every test not marked slow (real training, processes,
# servers, docs), on every core (pytest-xdist; TEST_WORKERS=0 runs one process). Aim: under
# 60 s on 2 cores; `make test` before a commit.
TEST_WORKERS ?= auto
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) -m "not slow and not fuzz"

# The aggregator's tests again, each on a fresh database of a real PostgreSQL server that the
# tests start (Debian's postgresql package: initdb + pg_ctl in a temp folder). Skips loudly
# where PostgreSQL is not installed.
test-postgres: $(STAMP)
	FEDSEG_TEST_DATABASE=postgresql $(BIN)/python -m pytest -q tests/aggregator

# The Ray simulation backend's tests (Ray is an optional extra: installed here, not by `install`).
test-ray: $(STAMP)
	$(BIN)/pip install -e ".[ray]"
	$(BIN)/python -m pytest -q -rs tests/deploy/test_ray_cluster.py tests/deploy/test_ray_backend.py

# schemathesis over the aggregator's OpenAPI document (admin and researcher tokens);
# at least 300 cases per token; FEDSEG_FUZZ_EXAMPLES=50 (and FEDSEG_FUZZ_COVERAGE=1) for longer
test-fuzz: $(STAMP)
	FEDSEG_FUZZ_MIN_CASES=$${FEDSEG_FUZZ_MIN_CASES:-300} $(BIN)/python -m pytest -q -s -m fuzz tests/fuzz

# Container tier (.ci/run runs it after `test`): starts Docker if need be, builds both images,
# runs the compose federation. Skips loudly where no Docker engine can start.
test-containers: $(STAMP)
	FEDSEG_CONTAINER_TESTS=1 $(BIN)/python -m pytest -q tests/containers

images:
	deploy/images.sh

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# The accumulating ACDC suite: runs only what is missing from benchmarks/results/runs/, then
# rebuilds the reports. BENCH_ARGS passes options, e.g. BENCH_ARGS="--seeds 0 1 2 --device cuda".
bench: $(STAMP)
	$(BIN)/python -m benchmarks.suite run $(BENCH_ARGS)

# Every other benchmark as well (each writes benchmarks/results/<name>.md).
bench-all: bench
	$(BIN)/python -m benchmarks.run_all

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
