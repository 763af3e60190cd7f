# The two commands a new user needs: `make lab` and `make test`.
# Only Python >= 3.11 and make are assumed; everything else goes into .venv.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.fedhem-installed
PORT   ?= 8888
ROOT_FLAG := $(shell [ "$$(id -u)" = "0" ] && echo --allow-root)

.PHONY: lab test env lint format bench clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "FedHem needs Python 3.11 or newer")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	$(BIN)/python -m fedhem_kernel install --sys-prefix
	@touch $(STAMP)

env: $(STAMP)

lab: $(STAMP)
	@echo "Starting JupyterLab on notebooks/ with the FedHem kernel (demo federation: 4 synthetic sites)."
	FEDHEM_FEDERATION=demo $(BIN)/jupyter lab --notebook-dir=notebooks --ip=127.0.0.1 --port=$(PORT) \
		--no-browser --ServerApp.open_browser=False \
		--MultiKernelManager.default_kernel_name=fedhem $(ROOT_FLAG) $(LAB_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

test: lint
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_survival.py

clean:
	rm -rf $(VENV) build dist .pytest_cache .ruff_cache
