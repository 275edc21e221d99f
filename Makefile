# Two commands for a fresh machine: `make demo` and `make test`.
# Each creates .venv and installs snugfit (editable) with the pinned torch first.
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -ec
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
# The local package mirror prints a warning per missing index page: hide that noise.
QUIET_PIP := (grep -v -e "is ignored: it is neither a file nor a directory" || true)

.PHONY: demo test test-slow lint format bench-recipe clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check -c constraints.txt -e '.[test]' 2>&1 | $(QUIET_PIP)
	$(BIN)/python -c "import snugfit, torch, torchvision, timm"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/snugfit demo

test: $(STAMP)
	$(BIN)/pytest

test-slow: $(STAMP)
	$(BIN)/pytest -m slow

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# bench/recipe.py against fastai run in the same process: fastai and scikit-image
# (the textures' photos) live in the benchmark's own environment (neither is a
# dependency), which sees .venv's packages. Options: make bench-recipe ARGS="--seeds 0".
FASTAI_VENV := bench/.venv-fastai
ARGS ?=
bench-recipe: $(STAMP)
	test -x $(FASTAI_VENV)/bin/python || $(PYTHON) -m venv $(FASTAI_VENV)
	$(BIN)/python -c "import site; print(site.getsitepackages()[0]); print('$(CURDIR)/src')" \
		> $$($(FASTAI_VENV)/bin/python -c "import site; print(site.getsitepackages()[0])")/snugfit-venv.pth
	$(FASTAI_VENV)/bin/python -m pip install -q --disable-pip-version-check -c constraints.txt \
		fastai==2.8.12 'scikit-image>=0.22,<1' 2>&1 | $(QUIET_PIP)
	$(FASTAI_VENV)/bin/python bench/recipe.py $(ARGS)

clean:
	rm -rf $(VENV) $(FASTAI_VENV) runs build *.egg-info src/*.egg-info .pytest_cache .ruff_cache
