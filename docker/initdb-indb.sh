#!/usr/bin/env bash
# Runs once, at the first start of an empty data volume (official image's initdb hook):
# install the indb schema into $POSTGRES_DB with the image's runtime venv.
set -euo pipefail
"$INDB_VENV/bin/indb" install \
  --dsn "host=/var/run/postgresql port=5432 dbname=${POSTGRES_DB:-postgres} user=${POSTGRES_USER:-postgres}" \
  --venv "$INDB_VENV"
