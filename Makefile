# The two commands a new user needs: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PYTEST_ARGS ?=

.PHONY: setup demo test unit crd bench clean

$(BIN)/agentcred: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

# Python packages into .venv, then the control plane binaries (built from Go modules once, cached).
setup: $(BIN)/agentcred
	$(BIN)/agentcred dev build

# The main job: a local control plane, the operator, and an agent Job receiving a credential.
demo: setup
	$(BIN)/agentcred demo

# Unit tests and tests against the real local control plane.
test: setup
	$(BIN)/python -m pytest $(PYTEST_ARGS)

unit: $(BIN)/agentcred
	$(BIN)/python -m pytest tests/unit $(PYTEST_ARGS)

# Regenerate the CRD from the models (a test fails when they differ).
crd: $(BIN)/agentcred
	$(BIN)/agentcred crd > crds/agentcredentials.agentcred.dev.yaml
	cp crds/agentcredentials.agentcred.dev.yaml charts/agentcred/files/

# Latency, throughput and memory on the local control plane (see bench/RESULTS.md).
bench: setup
	$(BIN)/python bench/run.py

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
