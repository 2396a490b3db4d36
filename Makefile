# The two commands of README: `make run` and `make test`. Everything else is what they need.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PYTEST_ARGS ?=
DEFAULT_MODEL_TAGS := ai/smollm2:135M-Q4_1 ai/smollm2:latest


.PHONY: run test deps run-deps venv engine engine-cuda model import-default-model lint clean k8s-tools

# Debian packages, installed only when missing. `make run` needs the engine's build tools;
# `make test` also needs the registry, htpasswd for its basic-auth variant, headless Chromium
# for the dashboard tests and logrotate for the packaged logrotate snippet's tests (by full
# path: /usr/sbin is not on every user's PATH). ccache makes engine rebuilds fast.
RUN_PACKAGES := cmake:cmake g++:g++ ccache:ccache curl:curl
TEST_PACKAGES := $(RUN_PACKAGES) docker-registry:docker-registry htpasswd:apache2-utils \
	chromium:chromium chromedriver:chromium-driver /usr/sbin/logrotate:logrotate

define install_missing
	@missing=""; \
	for pair in $(1); do \
		command -v "$${pair%%:*}" >/dev/null || missing="$$missing $${pair#*:}"; \
	done; \
	if [ -n "$$missing" ]; then \
		echo "deps: installing$$missing"; \
		SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing; \
	fi
endef

run-deps:
	$(call install_missing,$(RUN_PACKAGES))

deps: k8s-tools
	$(call install_missing,$(TEST_PACKAGES))

# Tools of tests/packaging/test_kubernetes.py (kubectl with kustomize, kubernetes-validate with
# its schemas, checkov), frozen in deploy/kubernetes/tools-requirements.txt, in a venv of their
# own outside the repository (checkov's dependencies clash with the project's) named by that
# file's hash: a cached venv is only ever used for exactly these versions. The test finds it by
# the same rule.
K8S_TOOLS_REQUIREMENTS := deploy/kubernetes/tools-requirements.txt
K8S_TOOLS_VENV := $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/model-runner/tools/k8s-venv-$(shell sha256sum $(K8S_TOOLS_REQUIREMENTS) | cut -c1-16)

k8s-tools: $(K8S_TOOLS_VENV)/.installed

# Order-only: the directory name already carries the file's hash, and a fresh clone's newer
# mtime must not rebuild a venv proven for exactly these pins.
$(K8S_TOOLS_VENV)/.installed: | $(K8S_TOOLS_REQUIREMENTS)
	rm -rf '$(K8S_TOOLS_VENV)'
	$(PYTHON) -m venv '$(K8S_TOOLS_VENV)'
	'$(K8S_TOOLS_VENV)/bin/pip' install --quiet --upgrade pip
	'$(K8S_TOOLS_VENV)/bin/pip' install --quiet -r $(K8S_TOOLS_REQUIREMENTS)
	touch '$@'

$(VENV)/.installed: setup.cfg setup.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

venv: $(VENV)/.installed

# Builds llama-server, proves it by generating tokens here, falls back to fewer instruction sets
# when this CPU traps one (README: Engine). Cached; seconds once proven on this machine.
engine:
	@bin/provision-engine >/dev/null

# The NVIDIA engine (GGML_CUDA=ON, architectures 80;86;89;90; needs the CUDA toolkit). Never part
# of .ci/run: about an hour on 2 cores the first time. Proven only where a GPU answers. The toolkit
# is $CUDA_HOME (default /usr/local/cuda); a partial one is named before anything compiles.
engine-cuda:
	@bin/provision-engine --cuda

model:
	@bin/provision-model >/dev/null

# Import the default model into the store (idempotent: same file, fixed creation time, same ID).
import-default-model: venv model
	$(BIN)/model-runner package --gguf "$$(bin/provision-model)" $(DEFAULT_MODEL_TAGS)

run: run-deps venv engine import-default-model
	LLAMA_SERVER_PATH="$$(bin/provision-engine)" exec $(BIN)/model-runner serve

test: deps venv engine model
	LLAMA_SERVER_PATH="$$(bin/provision-engine)" \
	DMR_TEST_MODEL="$$(bin/provision-model)" \
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# ruff (rules in ruff.toml: pycodestyle, pyflakes, imports, bugbear, pyupgrade, no preexec_fn,
# complexity at most 15) and mypy (setup.cfg [mypy]); both must be clean. Pinned, so a new
# release cannot turn CI red on its own.
LINT_TOOLS := ruff==0.17.6 mypy==2.4.1

lint: venv
	$(BIN)/pip install --quiet $(LINT_TOOLS)
	$(BIN)/ruff check orchestrator tests bench
	$(BIN)/mypy orchestrator

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache

# --- Packages (scripts in packaging/; outputs in build/packages/) ---------------------------------
.PHONY: deb rpm deb-engine deb-engine-cuda package-test image image-push test-image

# docker-model-plugin_<version>_all.deb: dpkg-buildpackage in a clean Debian chroot (mmdebstrap,
# Build-Depends only), then lintian on the host.
deb:
	packaging/build-deb.sh

# docker-model-plugin-<version>-1.noarch.rpm: rpmbuild -bb; on Debian in a clean chroot holding the
# spec's BuildRequires mapped to Debian packages (rpm/builddeps-debian.txt) and rpm/macros.compat.
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

# Optional CUDA engine package docker-model-runner-llama-server-cuda (GGML_CUDA=ON, 80;86;89;90),
# built on this host: needs NVIDIA's CUDA toolkit in /usr/local/cuda (or CUDA_HOME). Long; never
# part of .ci/run.
deb-engine-cuda:
	packaging/build-engine-deb.sh --cuda

# --- OCI image (packaging/build-image.sh; README "Scaling out") -----------------------------------
# build/image/oci: a Debian rootfs (mmdebstrap) holding our two .debs, assembled by umoci; no base
# image is pulled. IMAGE_DEBS reuses built packages; else both are built (the engine's from ccache).
IMAGE_LAYOUT ?= build/image/oci
IMAGE_TAG ?= $(shell sed -n 's/^__version__ = "\(.*\)"$$/\1/p' orchestrator/__init__.py)

image:
	IMAGE_LAYOUT='$(IMAGE_LAYOUT)' IMAGE_TAG='$(IMAGE_TAG)' packaging/build-image.sh

# Push the built layout anywhere skopeo reaches: make image-push IMAGE_DEST=docker://host/name:tag
# (IMAGE_DEST_TLS_VERIFY=false for a plain-HTTP registry).
image-push:
	@[ -n "$(IMAGE_DEST)" ] || { echo "image-push: set IMAGE_DEST, e.g. docker://registry.example.com/docker-model-runner:$(IMAGE_TAG)" >&2; exit 2; }
	skopeo copy --dest-tls-verify=$(or $(IMAGE_DEST_TLS_VERIFY),true) 'oci:$(IMAGE_LAYOUT):$(IMAGE_TAG)' '$(IMAGE_DEST)'

# Build the image, then tests/image: push it to a loopback registry, run it with podman (init step
# pulls the model, the daemon answers a chat). Part of .ci/run.
IMAGE_TEST_PACKAGES := podman:podman skopeo:skopeo runc:runc slirp4netns:slirp4netns umoci:umoci

test-image: deps venv engine model image
	$(call install_missing,$(IMAGE_TEST_PACKAGES))
	LLAMA_SERVER_PATH="$$(bin/provision-engine)" DMR_TEST_MODEL="$$(bin/provision-model)" \
	DMR_TEST_IMAGE='oci:$(IMAGE_LAYOUT):$(IMAGE_TAG)' \
	$(BIN)/python -m pytest tests/image $(PYTEST_ARGS)

# --- Benchmark: A (llama-server direct), B (this daemon), C (llama-server router) ------------------
# Scripts in bench/; tables on stdout, bench.json, table.md and charts in bench/results/<mode>/.
.PHONY: bench bench-quick bench-deps bench-relay
BENCH_ARGS ?=

# matplotlib draws the charts: installed into the venv only, and only when missing.
bench-deps: venv
	@$(BIN)/python -c 'import matplotlib' 2>/dev/null || $(BIN)/pip install --quiet matplotlib

# Section 11 (relay capacity) needs wrk and a C compiler, installed here when missing, and
# nginx, which is not: Debian's package also enables and starts a web server on port 80. Without
# /usr/sbin/nginx the section prints "skipped: apt-get install nginx-light wrk".
RELAY_PACKAGES := wrk:wrk cc:gcc

# The full run, sections 1-11 (about 8 minutes on 2 cores).
bench: deps venv engine model bench-deps
	$(call install_missing,$(RELAY_PACKAGES))
	LLAMA_SERVER_PATH="$$(bin/provision-engine)" DMR_TEST_MODEL="$$(bin/provision-model)" \
	$(BIN)/python -m bench.run $(BENCH_ARGS)

# The same sections with fewer and shorter rounds (about 4 minutes).
bench-quick: deps venv engine model bench-deps
	$(call install_missing,$(RELAY_PACKAGES))
	LLAMA_SERVER_PATH="$$(bin/provision-engine)" DMR_TEST_MODEL="$$(bin/provision-model)" \
	$(BIN)/python -m bench.run --quick $(BENCH_ARGS)

# Relay capacity (bench/relay.py): a synthetic engine that streams as fast as it can, relayed by
# the daemon and by Debian's nginx, loaded by wrk at 1/16/64/256 streams (about 3 minutes).
# nginx is not installed for you (see RELAY_PACKAGES above): `apt-get install nginx-light`,
# then `systemctl disable --now nginx` if unwanted. `make bench` runs the same as section 11.
bench-relay: venv model
	$(call install_missing,$(RELAY_PACKAGES))
	@[ -x /usr/sbin/nginx ] || { echo "bench-relay: install nginx first: apt-get install nginx-light" >&2; exit 2; }
	DMR_TEST_MODEL="$$(bin/provision-model)" $(BIN)/python -m bench.relay $(BENCH_ARGS)
