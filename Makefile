# The two commands a new user needs: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PYTEST_ARGS ?=

.PHONY: setup demo test check unit crd bench bench-quick clean lock image dist protos

# Every Python package pinned, with hashes, in requirements-dev.lock (make lock writes it from
# pyproject.toml); agentcred itself goes in editable, without dependencies of its own choosing.
$(BIN)/agentcred: pyproject.toml requirements-dev.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet --require-hashes -r requirements-dev.lock
	$(BIN)/pip install --quiet --no-deps -e .
	touch $@

# The CSI node plugin's protobufs (the CSI spec's csi.proto, the kubelet's plugin registration
# api.proto), fetched as the Go modules that publish them, checked against their go.sum hash,
# compiled with grpcio-tools into operator/agentcred_protos (generated, not committed).
PROTOS := operator/agentcred_protos/SOURCES
$(PROTOS): $(BIN)/agentcred operator/agentcred/devcluster/protos.py
	$(BIN)/python -m agentcred.devcluster.protos
	touch $@

protos: $(PROTOS)

# The lock files, from pyproject.toml: requirements.lock (what the operator's image installs)
# and requirements-dev.lock (that, the tests' and checks' packages, and the release tools);
# examples/mcp/requirements.lock from its requirements.in (the example's image).
lock: $(BIN)/agentcred
	$(BIN)/uv pip compile pyproject.toml --universal --generate-hashes --python-version 3.11 -q -o requirements.lock
	$(BIN)/uv pip compile pyproject.toml --universal --generate-hashes --python-version 3.11 -q \
		--extra test --extra dev --extra release -o requirements-dev.lock
	cd examples/mcp && ../../$(BIN)/uv pip compile requirements.in --universal --generate-hashes \
		--python-version 3.11 -q -o requirements.lock

# The operator's image (the Dockerfile's recipe, written here without Docker: needs root and
# mmdebstrap) with its CycloneDX SBOM beside it, cached by content under ~/.cache/agentcred/images.
image: setup
	$(BIN)/agentcred dev image

# The release artifacts in dist/: the chart packaged by helm, the image archive and its SBOM.
dist: setup
	$(BIN)/agentcred dev dist --out dist

# Python packages into .venv, then the control plane binaries (built from Go modules once, cached).
setup: $(BIN)/agentcred $(PROTOS)
	$(BIN)/agentcred dev build

# The main job: a local control plane, the operator, and an agent Job receiving a credential.
demo: setup
	$(BIN)/agentcred demo

# The architecture checks, then unit tests and tests against the real local control plane.
test: setup check
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# Layers imported only downwards (import-linter), types (mypy, the benchmark's plots too),
# style (ruff).
check: $(BIN)/agentcred $(VENV)/.bench-deps $(PROTOS)
	$(BIN)/lint-imports
	$(BIN)/mypy
	$(BIN)/ruff check operator tests bench examples
	$(BIN)/ruff format --check operator tests bench examples

unit: $(BIN)/agentcred $(PROTOS)
	$(BIN)/python -m pytest tests/unit $(PYTEST_ARGS)

# Regenerate the CRD from the models (a test fails when they differ).
crd: $(BIN)/agentcred $(PROTOS)
	for resource in agentcredentials agentcredentialpolicies; do \
		$(BIN)/agentcred crd $$resource > crds/$$resource.agentcred.dev.yaml && \
		cp crds/$$resource.agentcred.dev.yaml charts/agentcred/crds/ || exit 1; \
	done

# The benchmark's own packages (matplotlib for the plots, py-spy for --profile).
$(VENV)/.bench-deps: $(BIN)/agentcred pyproject.toml
	$(BIN)/pip install --quiet -e '.[test,dev,bench]'
	touch $@

# agentcred, the floor for its design and External Secrets side by side, on the local control
# plane (see bench/RESULTS.md): about an hour of both cores, plus ~6 min to build ESO the first
# time. The stages (python -m bench --help): the webhook, the floor and agentcred at 100/1,000/
# 5,000 pods idle and with a core kept busy, the token service, leak response, gateway decisions
# beside their floor, ESO, live projections to 20,000. BENCH_ARGS passes options, e.g.
# BENCH_ARGS="--publish", BENCH_ARGS="--eso skip", BENCH_ARGS="--only agentcred,floor --bursts 1000".
BENCH_ARGS ?=
bench: setup $(VENV)/.bench-deps
	$(BIN)/python -m bench $(BENCH_ARGS)

# About 5 minutes: every stage kind briefly (the webhook, the floor and agentcred for a burst of
# 200, tokens, leaks, the gateway, DPoP, CSI on a real node with 5 pods, ESO's build path
# rehearsed); CI runs it. Fails when the harness breaks, not when a target is missed.
bench-quick: setup $(VENV)/.bench-deps
	$(BIN)/python -m bench --quick $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis operator/agentcred_protos
