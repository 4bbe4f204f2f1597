# winasync.eda: every command sets up what is missing first, so each works on a fresh clone.
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV        ?= .venv
VENV_OLDEST ?= .venv-py311
# galaxy-importer and ansible-builder: a venv of their own (pyproject.toml, group importer)
VENV_IMPORTER ?= .venv-importer
WORK        := .work
COLLECTIONS := $(WORK)/collections
PY          := $(VENV)/bin/python
PIP         := $(PY) -m pip --disable-pip-version-check -q
# ansible.windows is not on PyPI by itself: it is unpacked from the `ansible` package.
ANSIBLE_PKG ?= ansible==14.5.0
# the release being prepared, as galaxy.yml says (artifact names, make changelog)
VERSION     := $(shell sed -n 's/^version: *//p' galaxy.yml)

export ANSIBLE_COLLECTIONS_PATH := $(CURDIR)/$(COLLECTIONS)
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: help setup setup-importer test test-unit test-integration test-sim test-e2e test-bench test-oldest lint sanity demo bench bench-full soak build changelog de-context clean

help:
	@echo "make demo        run the demo: simulated Windows hosts, async jobs, the rulebook reacting"
	@echo "make test        set up and run every test (what CI runs)"
	@echo "make test-unit   one test folder: test-unit, test-integration, test-sim, test-e2e, test-bench"
	@echo "make lint        ruff, mypy --strict, ansible-lint, antsibull-changelog lint"
	@echo "make sanity      ansible-test sanity on the collection (offline)"
	@echo "make bench       quick benchmark; make bench-full: the full one"
	@echo "make soak        reliability suite at full length"
	@echo "make build       build the collection artifact into $(WORK)/dist"
	@echo "make de-context  build context of the decision environment in $(WORK)/de (ansible-builder)"
	@echo "make changelog   release the fragments in changelogs/fragments as $(VERSION) (galaxy.yml)"

$(VENV)/.installed: pyproject.toml
	@tools/find-python 3.12 >/dev/null
	@# MIT Kerberos (KDC for the tests; headers for gssapi/krb5, which compile: about 3 minutes)
	@tools/ensure-krb5
	@test -x $(PY) || { echo "== creating $(VENV) with $$(tools/find-python 3.12)"; "$$(tools/find-python 3.12)" -m venv $(VENV); }
	$(PIP) install -U 'pip>=25.1'
	@echo "== installing the dev dependency group into $(VENV)"
	$(PIP) install --group dev
	@touch $@

$(VENV_OLDEST)/.installed: pyproject.toml
	@test -x $(VENV_OLDEST)/bin/python || "$$(tools/find-python 3.11)" -m venv $(VENV_OLDEST)
	$(VENV_OLDEST)/bin/python -m pip --disable-pip-version-check -q install -U 'pip>=25.1'
	$(VENV_OLDEST)/bin/python -m pip --disable-pip-version-check -q install --group unit-oldest
	@touch $@

$(VENV_IMPORTER)/.installed: pyproject.toml
	@test -x $(VENV_IMPORTER)/bin/python || "$$(tools/find-python 3.12)" -m venv $(VENV_IMPORTER)
	$(VENV_IMPORTER)/bin/python -m pip --disable-pip-version-check -q install -U 'pip>=25.1'
	$(VENV_IMPORTER)/bin/python -m pip --disable-pip-version-check -q install --group importer
	@touch $@

setup-importer: $(VENV_IMPORTER)/.installed

$(COLLECTIONS)/ansible_collections/ansible/windows/MANIFEST.json: $(VENV)/.installed
	@echo "== unpacking ansible.windows from $(ANSIBLE_PKG)"
	$(PY) tools/install_ansible_windows.py --package '$(ANSIBLE_PKG)' --dest $(COLLECTIONS)

setup: $(VENV)/.installed $(COLLECTIONS)/ansible_collections/ansible/windows/MANIFEST.json
	@tools/ensure-java
	@tools/ensure-postgres
	@# the checkout as the collection winasync.eda, for running rulebooks from a checkout
	@# (README). Kept out of the exported ANSIBLE_COLLECTIONS_PATH: there it would shadow
	@# an installed copy, and ansible-galaxy would refuse to install one.
	@rm -f $(COLLECTIONS)/ansible_collections/winasync/eda
	@mkdir -p $(WORK)/checkout/ansible_collections/winasync
	@ln -sfn $(CURDIR) $(WORK)/checkout/ansible_collections/winasync/eda

test: setup $(VENV_OLDEST)/.installed setup-importer lint sanity
	@echo "== tests on Python 3.12, newest ansible-core (tests/galaxy: galaxy-importer, ansible-builder)"
	WINASYNC_IMPORTER_VENV=$(CURDIR)/$(VENV_IMPORTER) $(PY) -m pytest
	@echo "== unit tests on Python 3.11, ansible-core 2.19"
	$(VENV_OLDEST)/bin/python -m pytest tests/unit -p no:cacheprovider

# one target per test folder (tests/README.md says what each needs)
test-unit test-integration test-sim test-e2e test-bench: test-%: setup
	$(PY) -m pytest tests/$*

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/antsibull-changelog lint
	@# the whole tree (.ansible-lint: profile production; only environments and .work excluded)
	$(VENV)/bin/ansible-lint

# tools/sanity.py: a copy of the checkout as a git work tree under .work/sanity, pip bootstrapped
# offline; pslint is skipped there (no pwsh), with its reason.
sanity: setup
	$(PY) tools/sanity.py

demo: setup
	$(PY) -m demo

bench: setup
	$(PY) -m bench --quick

bench-full: setup
	$(PY) -m bench --full

soak: setup
	$(PY) -m bench.soak --full

build: setup
	@mkdir -p $(WORK)/dist
	$(VENV)/bin/ansible-galaxy collection build --force --output-path $(WORK)/dist .

# decision-environment.yml takes the artifact under a fixed name, so it names no version.
de-context: build setup-importer
	cp $(WORK)/dist/winasync-eda-$(VERSION).tar.gz $(WORK)/dist/winasync-eda.tar.gz
	rm -rf $(WORK)/de
	$(VENV_IMPORTER)/bin/ansible-builder create -f decision-environment.yml -c $(WORK)/de \
	  --output-filename Containerfile

# The release manager's step: galaxy.yml's version gets the fragments; CHANGELOG.md regenerated.
changelog: setup
	$(VENV)/bin/antsibull-changelog release --version $(VERSION)
	$(VENV)/bin/antsibull-changelog generate

clean:
	rm -rf $(WORK) .pytest_cache .mypy_cache .ruff_cache
