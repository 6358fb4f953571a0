# MCP Host. `make up` runs the platform; `make test` runs the whole suite on real components.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
APT_PACKAGES := git podman runc runsc docker-registry debootstrap apache2-utils bubblewrap slirp4netns libvirt-dev pkg-config
K8S_BIN ?= $(or $(MCPHOST_TEST_CACHE),$(HOME)/.cache/mcphost-test)/kubernetes-1.20.2
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha256sum | cut -c1-12)

SANDBOX_PACKAGES := bubblewrap slirp4netns

ROOMS := api gateway builds runtimes governance workflows
# Integration tests spend most of their time waiting on real components, so two run at once (one file, or
# all the Kubernetes or all the VM tests, per worker: tests/conftest.py), the longest groups first
# (tests/markers.py::HEAVY_GROUPS, kept in that order by --no-loadscope-reorder). TEST_WORKERS=0 runs one
# at a time.
TEST_WORKERS ?= 2
PYTEST := $(BIN)/python -m pytest -q -p no:cacheprovider -n $(TEST_WORKERS) --dist loadgroup --no-loadscope-reorder

.PHONY: up test test-unit test-security test-quick $(addprefix test-,$(ROOMS)) lint bench install system-deps sandbox-deps vm-deps clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

## up: create .venv, install, and run the embedded platform (Temporal + UI, Postgres, API, worker)
up: install sandbox-deps
	$(BIN)/mcphost up

## sandbox-deps: on Debian as root, what the process runtime's sandbox needs (setpriv comes with util-linux)
sandbox-deps:
	@if [ "$$(id -u)" = "0" ] && command -v apt-get >/dev/null; then \
	  missing=""; for p in $(SANDBOX_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	  if [ -n "$$missing" ]; then \
	    echo "installing the process sandbox:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  fi; \
	else echo "not root on Debian: not installing $(SANDBOX_PACKAGES); without them mcphost up says the sandbox is unavailable"; fi

## system-deps: on Debian as root, the container engine, registry, image tooling and Node.js (npm servers) the tests use
system-deps:
	@if [ "$$(id -u)" = "0" ] && command -v apt-get >/dev/null; then \
	  missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	  command -v npm >/dev/null || missing="$$missing nodejs npm"; \
	  if [ -n "$$missing" ]; then \
	    echo "installing:$$missing"; apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  fi; \
	else echo "not root on Debian: skipping apt packages ($(APT_PACKAGES)); tests needing them will skip"; fi
	@# A real Kubernetes control plane (v1.20.2, built from Debian's source package once, ~5 min; cached).
	@if [ "$$(id -u)" = "0" ] && command -v apt-get >/dev/null; then \
	  tests/support/k8s/build.sh $(K8S_BIN) || echo "could not build the Kubernetes control plane; its tests will say so"; \
	fi

## vm-deps: libvirt-python for the virtual-machine runtime, when the host's libvirt headers are there
vm-deps: install system-deps
	@$(BIN)/python -c "import libvirt" 2>/dev/null || { \
	  if pkg-config --exists libvirt 2>/dev/null; then $(BIN)/pip install -q -e '.[vm]'; \
	  else echo "libvirt development files missing (Debian: apt-get install libvirt-dev pkg-config): VM tests will skip"; fi; }

## test: install what the tests need, start the real components, run the whole suite on TEST_WORKERS (2) workers
test: install system-deps vm-deps
	$(PYTEST) $(PYTEST_ARGS)

## test-unit: the unit tests alone: pure logic, no component started (about a minute)
test-unit: install
	$(BIN)/python -m pytest -q -p no:cacheprovider -m unit $(PYTEST_ARGS)

## test-<room>: one room's tests (tests/unit/<room>, tests/integration/<room>, its security files): test-api,
## test-gateway, test-builds, test-runtimes, test-governance, test-workflows (markers in tests/markers.py)
$(addprefix test-,$(ROOMS)): test-%: install system-deps vm-deps
	$(PYTEST) -m $* $(PYTEST_ARGS)

## test-security: the attacks by input channel (tests/security), each with its control
test-security: install system-deps vm-deps
	$(PYTEST) -m security $(PYTEST_ARGS)

## test-quick: everything but the slow tests and the Kubernetes and virtual-machine runtimes
test-quick: install system-deps vm-deps
	$(PYTEST) -m "not slow and not kube and not vm" $(PYTEST_ARGS)

## lint: ruff (format check + lint) and mypy on the whole tree
lint: install
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/mypy .

## bench: performance benchmarks (writes bench/results/*.json)
bench: install system-deps
	$(BIN)/python bench/deploy_latency.py
	$(BIN)/python bench/concurrent_deploys.py
	$(BIN)/python bench/recovery.py
	$(BIN)/python bench/build_push.py
	$(BIN)/python bench/gateway.py
	$(BIN)/python bench/gateway_cpu.py

clean:
	rm -rf $(VENV) .mcphost build *.egg-info
