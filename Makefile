# The two commands of the README.  Each creates the virtual environment .venv first when it is
# missing (or when pyproject.toml changed), so both work on a fresh machine.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
SCALE  ?= cpu
ARGS   ?=
# CIFAR-10, the default data set: $SBT_DATA/cifar10, else a shared data folder beside the repository,
# else torchvision's download (and without network, the built-in photos, which the run says).
export SBT_DATA ?= $(if $(wildcard ../shared/data/cifar10),../shared/data,)

.PHONY: reproduce test env clean-runs

reproduce: $(VENV)/.installed      ## run every notebook headlessly; results in runs/$(SCALE)
	$(PY) -m sbt_lib reproduce --scale $(SCALE) $(ARGS)

test: $(VENV)/.installed           ## the test suite (CI runs exactly this)
	$(PY) -m pytest $(ARGS)

env: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

clean-runs:
	rm -rf runs
