#!/usr/bin/env bash
# System set-up for indb on Debian 12 (bookworm), used by `make` and by docker/Dockerfile.
# Idempotent: does nothing when everything is already in place.
#   - Debian packages: PostgreSQL 15 server + dev headers, PL/Python 3, pg_cron, build tools, acl
#   - pgvector 0.8.0 built from Debian trixie's source package, installed for PostgreSQL 15
# `--runtime` (the image's final stage): only what a running server needs (server, PL/Python 3, pg_cron,
# client, python3.11 and its venv module), no compiler and no headers, and no 'main' cluster; pgvector must already be in
# place (the image copies it from its build stage, where this script built it without --runtime).
# Needs root (CI and `make demo` run as root); as another user it re-runs itself through sudo if present.
set -euo pipefail

MODE=full
if [ "${1:-}" = "--runtime" ]; then MODE=runtime; fi

PG_MAJOR="${PG_MAJOR:-15}"
PGVECTOR_VERSION="${PGVECTOR_VERSION:-0.8.0}"
PG_CONFIG="/usr/lib/postgresql/${PG_MAJOR}/bin/pg_config"
PACKAGES=(
  "postgresql-${PG_MAJOR}" "postgresql-server-dev-${PG_MAJOR}" "postgresql-plpython3-${PG_MAJOR}"
  "postgresql-${PG_MAJOR}-cron" "postgresql-client-${PG_MAJOR}"
  build-essential dpkg-dev acl ca-certificates python3.11 python3.11-venv python3.11-dev
)
if [ "$MODE" = runtime ]; then
  PACKAGES=(
    "postgresql-${PG_MAJOR}" "postgresql-plpython3-${PG_MAJOR}" "postgresql-${PG_MAJOR}-cron"
    "postgresql-client-${PG_MAJOR}" python3.11 python3.11-venv
  )
fi

log() { printf '[install-system] %s\n' "$*" >&2; }

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

vector_ok() {
  [ -x "$PG_CONFIG" ] || return 1
  local share
  share="$("$PG_CONFIG" --sharedir)"
  [ -f "$("$PG_CONFIG" --pkglibdir)/vector.so" ] && [ -f "$share/extension/vector--${PGVECTOR_VERSION}.sql" ]
}

if [ ${#missing[@]} -eq 0 ] && vector_ok; then
  log "system packages and pgvector ${PGVECTOR_VERSION} already installed"
  exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then exec sudo -E bash "$0" "$@"; fi
  log "missing: ${missing[*]:-} pgvector=${PGVECTOR_VERSION}; run this script as root (apt-get needs it)"
  exit 1
fi

export DEBIAN_FRONTEND=noninteractive
if [ "$MODE" = runtime ]; then
  # An image keeps its cluster on a volume (docker/entrypoint.py): Debian's 'main' cluster is not made.
  log "apt-get update"
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends postgresql-common
  sed -ri 's/^#?\s*create_main_cluster\s*=.*$/create_main_cluster = false/' /etc/postgresql-common/createcluster.conf
  log "installing: ${missing[*]}"
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
  vector_ok || { log "pgvector ${PGVECTOR_VERSION} is not in place: copy it from the build stage first"; exit 1; }
  log "done (runtime): PostgreSQL ${PG_MAJOR}, plpython3u, pg_cron, pgvector ${PGVECTOR_VERSION}"
  exit 0
fi
SRC_LIST=/etc/apt/sources.list.d/indb-trixie-src.sources
if ! vector_ok && [ ! -f "$SRC_LIST" ]; then
  # Source packages only (deb-src): no binary from trixie is ever installed.
  cat > "$SRC_LIST" <<SRC
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: trixie
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
fi

log "apt-get update"
apt-get update -qq || log "apt-get update reported errors for some sources; continuing"
if [ ${#missing[@]} -gt 0 ]; then
  log "installing: ${missing[*]}"
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
# Debian's postgresql-common creates a 'main' cluster on port 5432; indb runs its own cluster and
# leaves that one alone.

if ! vector_ok; then
  build="$(mktemp -d /tmp/indb-pgvector.XXXXXX)"
  log "building pgvector ${PGVECTOR_VERSION} from Debian trixie source in $build"
  ( cd "$build" && apt-get source -qq "pgvector=${PGVECTOR_VERSION}-*" >/dev/null 2>&1 || apt-get source -qq pgvector )
  srcdir="$(find "$build" -maxdepth 1 -type d -name 'pgvector-*' | head -n1)"
  [ -n "$srcdir" ] || { log "apt-get source pgvector produced no source tree"; exit 1; }
  make -C "$srcdir" -s PG_CONFIG="$PG_CONFIG" OPTFLAGS="" -j"$(nproc)"
  make -C "$srcdir" -s PG_CONFIG="$PG_CONFIG" install
  rm -rf "$build"
  vector_ok || { log "pgvector ${PGVECTOR_VERSION} not found after build (got another version?)"; exit 1; }
fi
log "done: PostgreSQL ${PG_MAJOR}, plpython3u, pg_cron, pgvector ${PGVECTOR_VERSION}"
