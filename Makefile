# indb: `make demo` and `make test` do all set-up on a fresh Debian 12 machine, then run.
# Every step is idempotent: a second run only does what changed. `make help` lists the targets.
SHELL := /bin/bash
PYTHON_BASE ?= /usr/bin/python3.11
VENV ?= .venv
STATE ?= .state
INDB := $(VENV)/bin/indb
PYTEST_ARGS ?=
STAMP := $(VENV)/.indb-installed
SYSTEM_STAMP := $(STATE)/.system-ok
IMAGE ?= indb:latest
IMAGE_ENV = VENV=$(VENV) STATE=$(STATE) INDB_IMAGE=$(IMAGE)

.PHONY: all help system c-functions venv db install demo test test-unit lint format bench stop image test-image

all: install

help: ## list the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/^([a-z-]+):.*## (.*)/  make \1\t\2/' | expand -t 20

# 1. Debian packages + pgvector built from Debian's source package (re-checked when the script changes)
$(SYSTEM_STAMP): docker/install-system.sh
	@bash docker/install-system.sh
	@mkdir -p $(STATE) && touch $@
system: $(SYSTEM_STAMP) ## install PostgreSQL 15, plpython3, pg_cron and pgvector (Debian packages)

# 1b. indb's C functions (sql/c: the audit log's append path), built with PGXS and installed into the server's
#     library folder (as root, or through sudo); rebuilt when their sources change
PG_CONFIG ?= /usr/lib/postgresql/15/bin/pg_config
C_STAMP := $(STATE)/.c-functions-ok
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)
$(C_STAMP): sql/c/indb_audit.c sql/c/indb_pit.c sql/c/Makefile $(SYSTEM_STAMP)
	@mkdir -p $(STATE)/log
	@echo "[c] building sql/c (indb_audit.so, indb_pit.so) with PGXS (log: $(STATE)/log/c-functions.log)"
	@( $(MAKE) -C sql/c PG_CONFIG=$(PG_CONFIG) && $(SUDO) $(MAKE) -C sql/c PG_CONFIG=$(PG_CONFIG) install ) \
	  > $(STATE)/log/c-functions.log 2>&1 || { tail -n 30 $(STATE)/log/c-functions.log; exit 1; }
	@touch $@
c-functions: $(C_STAMP) ## build and install indb's C functions (sql/c) into the server

# 2. the venv: made with the interpreter PL/Python embeds; exact pins from the runtime lock (what the
#    database needs) plus the dev lock (tests, lint, benchmarks); indb itself installed editable
$(STAMP): requirements.lock requirements-dev.lock pyproject.toml | $(SYSTEM_STAMP)
	@mkdir -p $(STATE)/log
	@if [ ! -x $(VENV)/bin/python ]; then echo "[venv] creating $(VENV) with $(PYTHON_BASE)"; $(PYTHON_BASE) -m venv $(VENV); fi
	@echo "[venv] installing pinned packages (log: $(STATE)/log/pip.log)"
	@set -o pipefail; ( $(VENV)/bin/python -m pip install --upgrade pip \
	  && $(VENV)/bin/python -m pip install -r requirements-dev.lock \
	  && $(VENV)/bin/python -m pip install --no-deps --no-build-isolation -e . ) > $(STATE)/log/pip.log 2>&1 \
	  || { tail -n 30 $(STATE)/log/pip.log; exit 1; }
	@if $(VENV)/bin/python -m pip list 2>/dev/null | grep -qiE '^(nvidia-|cuda-)'; then echo "[venv] CUDA packages were installed; check requirements.lock" >&2; exit 1; fi
	@echo "[venv] ready: $$(du -sh $(VENV) | cut -f1)"
	@touch $@
venv: $(STAMP) ## make .venv from the locks (runtime + dev)

# 3. the project's own cluster (runs as the postgres OS user when we are root)
db: $(STAMP) ## start the project's PostgreSQL cluster in .state/
	@$(INDB) db start

# 4. schema: alembic upgrade head + sql/ re-applied, in one transaction
install: db $(C_STAMP) ## install or upgrade indb in the project's database
	@$(INDB) install

demo: install ## set up everything and run the end-to-end demo on ../shared/data
	@$(INDB) demo

test: install lint ## set up everything, lint, and run every test (unit, sql, client)
	@set +e; $(VENV)/bin/python -m pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest: no tests were collected" >&2; fi; exit $$rc

test-unit: $(STAMP) ## only the unit tests (no database)
	@$(VENV)/bin/python -m pytest tests/unit $(PYTEST_ARGS)

# 5. the production image: docker/image.sh finds Docker or podman (installs podman where neither is there),
#    builds the base image from Debian packages where no registry is reachable, applies the OCI runtime
#    workaround only where the host needs it, and caches the wheels; tests/image run only here
image: ## build the production image (docker/Dockerfile) with Docker or podman, as $(IMAGE)
	@$(IMAGE_ENV) bash docker/image.sh build

test-image: $(STAMP) image ## build the image once, then test it in real containers (tests/image, testcontainers)
	@$(IMAGE_ENV) bash docker/image.sh test $(PYTEST_ARGS)

lint: $(STAMP) ## ruff (lint and format check) and mypy (client/, plpython/)
	@$(VENV)/bin/ruff check client plpython tests benchmarks migrations docker
	@$(VENV)/bin/ruff format --check client plpython tests benchmarks migrations docker
	@$(VENV)/bin/mypy

format: $(STAMP) ## ruff format and safe fixes
	@$(VENV)/bin/ruff format client plpython tests benchmarks migrations
	@$(VENV)/bin/ruff check --fix client plpython tests benchmarks migrations

bench: install ## run benchmarks/ (writes benchmarks/results/)
	@$(VENV)/bin/python -m benchmarks.run_all

stop: ## stop the project's PostgreSQL cluster
	@if [ -x $(INDB) ]; then $(INDB) db stop; fi
