# indb: `make demo` and `make test` do all set-up on a fresh Debian 12 machine, then run.
# Every step is idempotent: a second run only does what changed.
SHELL := /bin/bash
PYTHON_BASE ?= /usr/bin/python3.11
VENV ?= .venv
STATE ?= .state
INDB := $(VENV)/bin/indb
PYTEST_ARGS ?=
STAMP := $(VENV)/.indb-installed
SYSTEM_STAMP := $(STATE)/.system-ok

.PHONY: all system venv db install demo test test-unit test-fast bench clean-state stop help

all: install

help:
	@echo "make demo    - set up everything and run the end-to-end demo on ../shared/data"
	@echo "make test    - set up everything and run every test (unit, sql, client)"
	@echo "make bench   - run benchmarks/ (writes benchmarks/results/)"
	@echo "make stop    - stop the project's PostgreSQL cluster"

# 1. Debian packages + pgvector 0.8.0 built from trixie's source package (re-checked when the script changes)
$(SYSTEM_STAMP): docker/install-system.sh
	@bash docker/install-system.sh
	@mkdir -p $(STATE) && touch $@
system: $(SYSTEM_STAMP)

# 2. the runtime venv: made with the interpreter PL/Python embeds; exact pins from requirements.lock
$(STAMP): requirements.lock client/pyproject.toml plpython/pyproject.toml | $(SYSTEM_STAMP)
	@mkdir -p $(STATE)/log
	@if [ ! -x $(VENV)/bin/python ]; then echo "[venv] creating $(VENV) with $(PYTHON_BASE)"; $(PYTHON_BASE) -m venv $(VENV); fi
	@echo "[venv] installing pinned packages (log: $(STATE)/log/pip.log)"
	@set -o pipefail; ( $(VENV)/bin/python -m pip install --upgrade pip \
	  && $(VENV)/bin/python -m pip install -r requirements.lock \
	  && $(VENV)/bin/python -m pip install --no-deps --no-build-isolation -e client -e plpython ) > $(STATE)/log/pip.log 2>&1 \
	  || { tail -n 30 $(STATE)/log/pip.log; exit 1; }
	@if $(VENV)/bin/python -m pip list 2>/dev/null | grep -qiE '^(nvidia-|cuda-)'; then echo "[venv] CUDA packages were installed; check requirements.lock" >&2; exit 1; fi
	@echo "[venv] ready: $$(du -sh $(VENV) | cut -f1)"
	@touch $@
venv: $(STAMP)

# 3. the project's own cluster (runs as the postgres OS user when we are root)
db: $(STAMP)
	@$(INDB) db start

# 4. schema: alembic upgrade head + sql/ re-applied, in one transaction
install: db
	@$(INDB) install

demo: install
	@$(INDB) demo

test: install
	@set +e; $(VENV)/bin/python -m pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest: no tests were collected" >&2; exit 0; fi; exit $$rc

test-unit: $(STAMP)
	@$(VENV)/bin/python -m pytest tests/unit $(PYTEST_ARGS)

bench: install
	@$(VENV)/bin/python -m benchmarks.run_all

stop:
	@if [ -x $(INDB) ]; then $(INDB) db stop; fi
