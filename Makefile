# mlic: the two commands are `make run` and `make test`; both set up .venv on first use.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
SCENES := data/scenes/meta.json
# notebooks `make run` executes at once (each kernel gets its share of the cores)
JOBS ?= 2
# JupyterLab refuses to run as root (containers, CI) without --allow-root
LAB_FLAGS := --notebook-dir=notebooks $(if $(filter 0,$(shell id -u)),--allow-root)

# figures without a display for the batch targets only: the lab's kernels keep matplotlib's inline backend
run test test-fast bench gpu-check: export MPLBACKEND := Agg

.PHONY: run test test-fast lint lab bench gpu-check scenes clean-reports

$(STAMP): requirements.txt pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps -e .
	@touch $(STAMP)

$(SCENES): $(STAMP)
	$(VENV)/bin/mlic scenes --out data/scenes

scenes: $(SCENES)

## make run: the quick suite of notebooks on the Scenes benchmark → reports/quick/index.md (+ index.html)
run: $(SCENES)
	@$(VENV)/bin/mlic run quick --jobs $(JOBS); status=$$?; \
	echo "Report: $(CURDIR)/reports/quick/index.md and index.html (timings: reports/quick/timings.json)"; \
	exit $$status

## make test: the test suite (unit, notebooks under papermill, distributed), slowest tests listed at the end
test: $(STAMP)
	$(VENV)/bin/pytest

## make test-fast: the unmarked tier only (no training runs, subprocesses or notebooks; under a minute)
test-fast: $(STAMP)
	$(VENV)/bin/pytest -m "not slow and not notebook and not distributed"

## make lint: ruff on the package, the tests, the benchmarks and the notebooks
lint: $(STAMP)
	$(VENV)/bin/ruff check mlic tests benchmarks notebooks

## make lab: JupyterLab on notebooks/ (inline figures; relative paths resolve against this folder, see README)
lab: $(SCENES)
	env -u MPLBACKEND $(VENV)/bin/jupyter lab $(LAB_FLAGS)

## make bench: speed benchmarks, ratios measured side by side
bench: $(SCENES)
	@for b in benchmarks/bench_*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

## make gpu-check: the GPU paths on a CUDA machine (engine vs bare timm, compile, channels-last, torchrun, ONNX)
gpu-check: $(STAMP)
	$(PY) benchmarks/gpu_check.py

clean-reports:
	rm -rf reports/quick reports/paper
