# Two commands do all set-up on a fresh machine (README.md): `make test` and `make reproduce`.
# Both create .venv if it is missing and install the pinned environment (constraints.txt) first.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
SCALE ?= tiny
PYTEST_ARGS ?=

.PHONY: install test reproduce rehearse lab export clean-nbs sync hooks

install: $(STAMP)

# torch first, pinned: with no torch installed, a dependency asking for plain `torch` would pull the CUDA build.
$(STAMP): setup.py settings.ini constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -c constraints.txt torch==2.13.0
	$(PY) -m pip install -q -c constraints.txt -e ".[dev]"
	@touch $(STAMP)

## the whole test suite: notebook checks, unit and integration tests, export/clean sync, no torchvision on CPU
test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

## run the papermill chain at $(SCALE) (default tiny) and write reports/$(SCALE)/
reproduce: $(STAMP)
	$(VENV)/bin/magicid-run --scale $(SCALE)

## rehearse a real scale's chain (SCALE=h100 or paper) on tiny random models of its real classes: reports/rehearse-$(SCALE)/
rehearse: $(STAMP)
	$(VENV)/bin/magicid-run --scale $(SCALE) --rehearse

## open the notebooks in JupyterLab
lab: $(STAMP)
	$(VENV)/bin/jupyter lab nbs

## notebooks -> magicid/*.py, then strip notebook metadata (run both before committing)
sync: export clean-nbs
export: $(STAMP)
	$(VENV)/bin/nbdev_export
clean-nbs: $(STAMP)
	$(VENV)/bin/nbdev_clean

## register nbdev's git merge driver for notebooks (.gitattributes names it)
hooks: $(STAMP)
	$(VENV)/bin/nbdev_install_hooks
