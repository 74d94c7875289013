# The mask-labelling mesh. `make demo` and `make test` work on a machine with only
# Python 3.11, pip and gcc: environments are built on first use (uv, under .venvs/).
#
#   make demo                     whole mesh end to end on generated data (no GPU, no weights)
#   make test                     the test suite (+ the SAM2 CPU test in the sam2 environment)
#   make up / down / status / logs    (up restarts a service whose config changed)
#   make restart SERVICES=sam     stop and start services (all when SERVICES is empty)
#   make up SERVICES="sam vlm"    start a subset (e.g. on a GPU host); BIND=tcp://0.0.0.0:5552
#   make env SERVICE=sam BACKEND=sam2    build a heavy environment on request
#   make bench-protocol | bench-reader | bench-sam | bench-pipeline | bench-vos | bench-studio
#   make up, then open http://127.0.0.1:8555/ : the studio (services/studio/README.md)

SHELL := /bin/bash
PYTHON ?= python3
# SERVICES_CONFIG (environment or make argument) picks the services config; unset = configs/services.yaml
export SERVICES_CONFIG
CLI_PY := .venvs/cli/bin/python
TEST_PY := .venvs/test/bin/python
SAM2_PY := .venvs/test-sam2/bin/python
SAM3_PY := .venvs/test-sam3/bin/python
DEMO_DATA ?= data/demo
DEMO_OUT ?= out/demo
PYTEST_ARGS ?=

.PHONY: help env cli-env test-env up restart down status logs demo demo-data test test-fast test-sam2 test-sam3 \
        test-reliability bench-protocol bench-reader bench-sam bench-pipeline bench-vos bench-studio \
        studio-data lint clean

help:
	@awk '/^#/ { sub(/^# ?/, ""); print; next } { exit }' Makefile

# -- environments -------------------------------------------------------------------------
cli-env:
	@$(PYTHON) tools/envs.py cli orchestrator/requirements.txt tools/requirements.txt

test-env:
	@$(PYTHON) tools/envs.py test tests/requirements.txt

env: cli-env
	@test -n "$(SERVICE)" || { echo "usage: make env SERVICE=sam BACKEND=sam2"; exit 2; }
	@$(CLI_PY) -m tools.launch env $(SERVICE) $(BACKEND)

# -- services -----------------------------------------------------------------------------
up: cli-env studio-data
	@$(CLI_PY) -m tools.launch up

restart: cli-env
	@$(CLI_PY) -m tools.launch restart

down: cli-env
	@$(CLI_PY) -m tools.launch down

status: cli-env
	@$(CLI_PY) -m tools.launch status

logs: cli-env
	@$(CLI_PY) -m tools.launch logs

# -- demo -----------------------------------------------------------------------------------
demo-data: cli-env
	@$(CLI_PY) -m tools.demo_data --out $(DEMO_DATA) --seed 0

# the studio's default project is the demo buffer: make it once when missing
studio-data: cli-env
	@test -d $(DEMO_DATA)/demo.zarr || $(CLI_PY) -m tools.demo_data --out $(DEMO_DATA) --seed 0

demo: cli-env
	@$(CLI_PY) -m tools.demo --data $(DEMO_DATA) --out $(DEMO_OUT)

# -- tests ----------------------------------------------------------------------------------
test: test-fast test-sam2 test-sam3

test-fast: test-env
	$(TEST_PY) -m pytest -q -m "not sam2 and not sam3_loaders and not reliability" $(PYTEST_ARGS)

test-sam2:
	@$(PYTHON) tools/envs.py test-sam2 tests/requirements-sam2.txt
	$(SAM2_PY) -m pytest -q -m sam2 tests/unit/test_sam2_*.py tests/integration/test_sam2_*.py $(PYTEST_ARGS)

test-sam3:
	@$(PYTHON) tools/envs.py test-sam3 tests/requirements-sam3.txt
	MASKMESH_REQUIRE_SAM3=1 $(SAM3_PY) -m pytest -q -m sam3_loaders tests/unit/test_sam3_loaders.py $(PYTEST_ARGS)

test-reliability: test-env
	$(TEST_PY) -m pytest -q -m reliability tests/reliability $(PYTEST_ARGS)

lint: test-env
	.venvs/test/bin/ruff check . && .venvs/test/bin/ruff format --check .

# -- benchmarks (figures in README.md come from these) --------------------------------------
bench-protocol: test-env
	$(TEST_PY) -m bench.bench_protocol

bench-reader: test-env
	$(TEST_PY) -m bench.bench_reader

bench-sam: test-env demo-data
	$(TEST_PY) -m bench.bench_sam --data $(DEMO_DATA)

bench-pipeline: test-env
	$(TEST_PY) -m bench.bench_pipeline

# DAVIS folder (not in the repo); skipped with a message when absent. VOS_ARGS: e.g. --max-frames 20
DAVIS ?= ../shared/data/davis2016-dev
VOS_ARGS ?=
bench-vos: test-env
	$(TEST_PY) -m bench.bench_vos --davis $(DAVIS) $(VOS_ARGS)

bench-studio: test-env studio-data
	$(TEST_PY) -m bench.bench_studio --data $(DEMO_DATA)

clean:
	rm -rf .run out data/demo .pytest_cache
