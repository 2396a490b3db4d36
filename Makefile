# The two commands of README: `make run` and `make test`. Everything else is what they need.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PYTEST_ARGS ?=
DEFAULT_MODEL_TAGS := ai/smollm2:135M-Q4_1 ai/smollm2:latest

.PHONY: run test deps venv engine model import-default-model lint clean

# System packages the tests need: the registry, htpasswd for its basic-auth variant, curl,
# ccache to make engine rebuilds fast. Installed only when missing.
deps:
	@missing=""; \
	command -v docker-registry >/dev/null || missing="$$missing docker-registry"; \
	command -v htpasswd >/dev/null || missing="$$missing apache2-utils"; \
	command -v curl >/dev/null || missing="$$missing curl"; \
	command -v ccache >/dev/null || missing="$$missing ccache"; \
	command -v cmake >/dev/null || missing="$$missing cmake"; \
	command -v g++ >/dev/null || missing="$$missing g++"; \
	if [ -n "$$missing" ]; then \
		echo "deps: installing$$missing"; \
		SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing; \
	fi

$(VENV)/.installed: setup.cfg setup.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

venv: $(VENV)/.installed

engine:
	@bin/provision-engine >/dev/null

model:
	@bin/provision-model >/dev/null

# Import the default model into the store (idempotent: same file, fixed creation time, same ID).
import-default-model: venv model
	$(BIN)/model-runner package --gguf "$$(bin/provision-model)" $(DEFAULT_MODEL_TAGS)

run: deps venv engine import-default-model
	LLAMA_SERVER_PATH="$$(bin/provision-engine)" exec $(BIN)/model-runner serve

test: deps venv engine model
	LLAMA_SERVER_PATH="$$(bin/provision-engine)" \
	DMR_TEST_MODEL="$$(bin/provision-model)" \
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: venv
	$(BIN)/pip install --quiet ruff
	$(BIN)/ruff check orchestrator tests

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache

# --- Packages (scripts in packaging/; outputs in build/packages/) ---------------------------------
.PHONY: deb rpm deb-engine package-test

# docker-model-plugin_<version>_all.deb (dpkg-buildpackage -us -uc -b, then lintian); installs its
# build dependencies when missing.
deb:
	packaging/build-deb.sh

# docker-model-plugin-<version>-1.noarch.rpm (rpmbuild -bb; rpm/macros.compat on Debian hosts).
rpm:
	packaging/build-rpm.sh

# Optional engine package docker-model-runner-llama-server (pinned llama.cpp, GGML_NATIVE=OFF):
# ~15 minutes on 2 cores the first time, seconds with a warm ccache.
deb-engine:
	packaging/build-engine-deb.sh

# Build both packages, install the .deb, run the installed service as its unit would, purge it.
# Needs root (or sudo); uses the engine package when `make deb-engine` built one.
package-test:
	packaging/package-test.sh
