# The whole set-up on a fresh machine is one of these two commands (times: docs/reproduce.md):
#   make reproduce   regenerate every table and figure (profile quick, CPU)
#   make test        the test suite on every core: the notebooks (nbval, smoke) and the unit tests
# Options: make reproduce PROFILE=fashion DEVICE=cuda [NO_PROGRESS=1: no progress lines]
#   [FORCE_RETRAIN=1: retrain the chapters' runs, not the budget study's; to retrain the study:
#   docs/reproduce.md#retraining]; make test PYTEST_WORKERS=0 (no worker processes);
#   on a CUDA machine: TORCH="torch==2.11.0 torchvision==0.26.0"

SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -c
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PROFILE ?= quick
DEVICE ?= auto
# Every package is pinned by the lock files (tools/lock.py): requirements.lock, the same on
# every machine, and requirements-torch.lock, PyTorch's stack of this x86_64 CPU machine
# (torch 2.14.1, torchvision 0.29.1 and their wheels). On another machine TORCH replaces the
# latter, e.g. TORCH="torch==2.11.0 torchvision==0.26.0" for CUDA wheels with Python 3.12.
LOCK := requirements.lock
TORCH_LOCK := requirements-torch.lock
TORCH ?= -r $(TORCH_LOCK)
STAMP := $(VENV)/.installed
# pip prints one warning per missing local mirror folder; they are noise here
QUIET_PIP := grep -v "^WARNING: Location" || true

.PHONY: reproduce test lint bench clean-smoke help check-fresh lock fashion-data

help:
	@sed -n '1,7p' Makefile

# uv installs (tools/uv_install.py: pip's index settings, bytecode compiled in parallel) in
# about 1.5 minutes here against pip's 4.5; where uv cannot be had or fails, pip does it all.
# The lock's pins first, then adt itself without dependencies (they are the lock's); then
# tools/lock.py checks that the environment holds the locked versions.
$(STAMP): pyproject.toml environment.yml $(LOCK) $(TORCH_LOCK)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	( $(PY) -m pip install -q $$(grep '^uv==' $(LOCK)) 2>&1 | $(QUIET_PIP) ) && \
		$(PY) tools/uv_install.py $(PY) $(TORCH) -r $(LOCK) && \
		$(PY) tools/uv_install.py $(PY) --no-deps -e . || { \
		echo "uv failed: installing with pip"; \
		$(PY) -m pip install -q $(TORCH) -r $(LOCK) 2>&1 | $(QUIET_PIP); \
		$(PY) -m pip install -q --no-deps -e . 2>&1 | $(QUIET_PIP); }
	$(PY) tools/lock.py check $(PY) $(if $(filter -r $(TORCH_LOCK),$(TORCH)),--torch)
	$(PY) -c "import torch, torchvision, torchattacks, pyautoattack, papermill, nbval, mlxtend, xdist"
	touch $(STAMP)

# Rewrite the lock files from the installed environment (after a deliberate upgrade)
lock:
	$(PY) tools/lock.py write $(PY)

reproduce: $(STAMP) $(if $(filter fmnist fashion,$(PROFILE)),fashion-data)
	$(PY) -m adt.pipeline --profile $(PROFILE) --device $(DEVICE) $(if $(FORCE_RETRAIN),--force-retrain) \
		$(if $(NO_PROGRESS),--no-progress)

# Fashion-MNIST (profiles fmnist and fashion, and the test that reads it) is the Debian package
# dataset-fashion-mnist, read from /usr/share/datasets/fashion-mnist/: installed here where
# apt-get can (as root); elsewhere this says what to run. Nothing is downloaded at run time.
FASHION := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
fashion-data:
	@test -f $(FASHION) || { if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing the Debian package dataset-fashion-mnist (Fashion-MNIST, 30 MB)"; \
		{ DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist || \
		  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
		    dataset-fashion-mnist; }; } >/dev/null 2>&1 || echo "could not install \
		dataset-fashion-mnist; run: sudo apt-get install dataset-fashion-mnist"; \
	else echo "Fashion-MNIST is not installed; run: sudo apt-get install dataset-fashion-mnist"; fi; }

# Were the committed figures, tables and notebooks produced by the code in the tree?
check-fresh:
	$(if $(wildcard $(PY)),$(PY),$(PYTHON)) -m adt.pipeline --check-fresh

# One pytest session on every core (pytest-xdist: PYTEST_WORKERS processes, one per logical
# core by default, each with its share of the cores): nbval executes the notebooks (smoke), writing
# their figures, tables and MANIFEST.json to ADT_OUTPUT_DIR. One worker runs their cells in
# order and then tests/test_pipeline.py, which checks those outputs; the other workers take
# the other tests meanwhile (tests/conftest.py: pytest_xdist_make_scheduler). So every
# notebook executes once per `make test`; --durations lists the slowest tests.
# Then the tests whose assertions rest on trained models run again on a second kernel path
# (oneDNN and ATen held to SSE4.1 / plain C++: other last bits, other trained weights), so a
# test that holds only on this CPU's kernels fails here too; a file per unit there, so that a
# module's trained models are built once. The target fails if either run does.
PYTEST_WORKERS ?= logical
PYTEST := $(PY) -m pytest -q -p no:cacheprovider -n $(PYTEST_WORKERS) --durations=15
SECOND_ISA_TESTS := tests/test_strength.py tests/test_attacks.py tests/test_evaluate.py \
	tests/test_inner.py tests/test_trades.py tests/test_fidelity.py tests/test_distributed.py
test: $(STAMP) fashion-data
	$(PY) -m ruff check adt tests notebooks
	out=$$(mktemp -d) && ADT_PROFILE=smoke ADT_PROGRESS=0 ADT_OUTPUT_DIR=$$out $(PYTEST) \
		--dist load --nbval-current-env --nbval-lax \
		notebooks/ tests/; status=$$?; rm -rf $$out; exit $$status
	ONEDNN_MAX_CPU_ISA=SSE41 ATEN_CPU_CAPABILITY=default ADT_PROFILE=smoke ADT_PROGRESS=0 \
		$(PYTEST) --dist loadfile $(SECOND_ISA_TESTS)

lint: $(STAMP)
	$(PY) -m ruff check adt tests notebooks

bench: $(STAMP)
	$(PY) -m adt.bench --device $(DEVICE)
