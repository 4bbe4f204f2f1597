# winasync.eda: every command sets up what is missing first, so each works on a fresh clone.
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV        ?= .venv
VENV_OLDEST ?= .venv-py311
WORK        := .work
COLLECTIONS := $(WORK)/collections
PY          := $(VENV)/bin/python
PIP         := $(PY) -m pip --disable-pip-version-check -q
# ansible.windows is not on PyPI by itself: it is unpacked from the `ansible` package.
ANSIBLE_PKG ?= ansible==14.5.0

export ANSIBLE_COLLECTIONS_PATH := $(CURDIR)/$(COLLECTIONS)
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: help setup test test-unit test-oldest lint demo bench bench-full soak build clean

help:
	@echo "make demo        run the demo: simulated Windows hosts, async jobs, the rulebook reacting"
	@echo "make test        set up and run every test (what CI runs)"
	@echo "make lint        ruff, mypy --strict, ansible-lint"
	@echo "make bench       quick benchmark; make bench-full: the full one"
	@echo "make soak        reliability suite at full length"
	@echo "make build       build the collection artifact into $(WORK)/dist"

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

$(COLLECTIONS)/ansible_collections/ansible/windows/MANIFEST.json: $(VENV)/.installed
	@echo "== unpacking ansible.windows from $(ANSIBLE_PKG)"
	$(PY) tools/install_ansible_windows.py --package '$(ANSIBLE_PKG)' --dest $(COLLECTIONS)

setup: $(VENV)/.installed $(COLLECTIONS)/ansible_collections/ansible/windows/MANIFEST.json
	@tools/ensure-java
	@# the checkout as the collection winasync.eda, for running rulebooks from a checkout
	@# (README). Kept out of the exported ANSIBLE_COLLECTIONS_PATH: there it would shadow
	@# an installed copy, and ansible-galaxy would refuse to install one.
	@rm -f $(COLLECTIONS)/ansible_collections/winasync/eda
	@mkdir -p $(WORK)/checkout/ansible_collections/winasync
	@ln -sfn $(CURDIR) $(WORK)/checkout/ansible_collections/winasync/eda

test: setup $(VENV_OLDEST)/.installed lint
	@echo "== tests on Python 3.12, newest ansible-core"
	$(PY) -m pytest
	@echo "== unit tests on Python 3.11, ansible-core 2.19"
	$(VENV_OLDEST)/bin/python -m pytest tests/unit -p no:cacheprovider

test-unit: setup
	$(PY) -m pytest tests/unit

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/ansible-lint --profile production playbooks rulebooks

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

clean:
	rm -rf $(WORK) .pytest_cache .mypy_cache .ruff_cache
