#!/usr/bin/env bash
# System set-up for indb on Debian 12 (bookworm), used by `make` and by docker/Dockerfile.
# Idempotent: does nothing when everything is already in place.
#   - Debian packages: PostgreSQL 15 server + dev headers, PL/Python 3, pg_cron, build tools, acl
#   - pgvector built from Debian unstable's *source* package (deb-src only: no binary from another suite is
#     ever installed), pinned: the first of PGVECTOR_VERSIONS that Debian offers is built (0.8.7, then older
#     releases down to PGVECTOR_MIN = 0.8.4, the first without the HNSW vacuum corruption, pgvector#993);
#     an older pgvector already in place (0.8.0 from trixie) is rebuilt. `make install` installs next to the
#     old scripts, so databases on an older version keep working until `indb install` runs
#     ALTER EXTENSION vector UPDATE.
# `--runtime` (the image's final stage): only what a running server needs (server, PL/Python 3, pg_cron,
# client, python3.11 and its venv module), no compiler and no headers, and no 'main' cluster; pgvector must already be in
# place (the image copies it from its build stage, where this script built it without --runtime).
# Needs root (CI and `make demo` run as root); as another user it re-runs itself through sudo if present.
set -euo pipefail

MODE=full
if [ "${1:-}" = "--runtime" ]; then MODE=runtime; fi

PG_MAJOR="${PG_MAJOR:-15}"
# The pin, newest first; the first one Debian's deb-src offers is built. Never older than PGVECTOR_MIN.
PGVECTOR_VERSIONS="${PGVECTOR_VERSIONS:-0.8.7 0.8.6 0.8.5 0.8.4}"
PGVECTOR_MIN="${PGVECTOR_MIN:-0.8.4}"
PGVECTOR_PIN="${PGVECTOR_VERSIONS%% *}"
# Used only when the archive serves none of the above (trixie's 0.8.0, with a loud warning): set it empty
# to fail instead.
PGVECTOR_LAST_RESORT="${PGVECTOR_LAST_RESORT-0.8.0}"
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

# The version of the pgvector in place (the control file's default_version), empty when there is none.
vector_installed() {
  [ -x "$PG_CONFIG" ] || return 0
  local control
  control="$("$PG_CONFIG" --sharedir)/extension/vector.control"
  [ -f "$("$PG_CONFIG" --pkglibdir)/vector.so" ] && [ -f "$control" ] || return 0
  sed -nE "s/^default_version *= *'([^']+)'.*/\1/p" "$control"
}
# version_ge A B: A >= B (Debian version ordering)
version_ge() { [ -n "$1" ] && dpkg --compare-versions "$1" ge "$2"; }
# ok: the pin (or newer) is in place. The runtime stage accepts anything >= PGVECTOR_MIN (it copies what
# the build stage built).
vector_ok() { version_ge "$(vector_installed)" "$PGVECTOR_PIN"; }
vector_min_ok() { version_ge "$(vector_installed)" "$PGVECTOR_MIN"; }

if [ ${#missing[@]} -eq 0 ] && vector_ok; then
  log "system packages and pgvector $(vector_installed) already installed"
  exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then exec sudo -E bash "$0" "$@"; fi
  log "missing: ${missing[*]:-} pgvector=${PGVECTOR_PIN} (installed: $(vector_installed)); run this script as root (apt-get needs it)"
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
  if ! vector_min_ok; then
    # the build stage fell back to the last resort (the archive served none of the pinned versions): the
    # image carries what it built, with the same warning
    if [ -n "$PGVECTOR_LAST_RESORT" ] && version_ge "$(vector_installed)" "$PGVECTOR_LAST_RESORT"; then
      log "WARNING: pgvector $(vector_installed) is older than ${PGVECTOR_MIN}: it has the HNSW vacuum corruption bug (pgvector#993)"
    else
      log "pgvector >= ${PGVECTOR_MIN} is not in place: copy it from the build stage first"
      exit 1
    fi
  fi
  log "done (runtime): PostgreSQL ${PG_MAJOR}, plpython3u, pg_cron, pgvector $(vector_installed)"
  exit 0
fi
SRC_LIST=/etc/apt/sources.list.d/indb-pgvector-src.sources
if ! vector_ok && [ ! -f "$SRC_LIST" ]; then
  # Source packages only (deb-src): no binary from unstable or trixie is ever installed. Unstable has the
  # pin; trixie (0.8.0) is the last resort. The trixie-only entry of older versions of this script is replaced.
  rm -f /etc/apt/sources.list.d/indb-trixie-src.sources
  cat > "$SRC_LIST" <<SRC
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: unstable trixie
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

# Build one Debian source version of pgvector ("0.8.7-1"); fails when the archive does not serve its files.
build_pgvector() {
  local deb="$1" build srcdir
  build="$(mktemp -d /tmp/indb-pgvector.XXXXXX)"
  log "building pgvector ${deb} from Debian's source package in $build (installed: $(vector_installed))"
  if ! ( cd "$build" && apt-get source -qq "pgvector=${deb}" >"$build.log" 2>&1 ); then
    log "apt-get source pgvector=${deb} failed: $(grep -m1 -E '^E:' "$build.log" || tail -n1 "$build.log")"
    rm -rf "$build" "$build.log"
    return 1
  fi
  srcdir="$(find "$build" -maxdepth 1 -type d -name 'pgvector-*' | head -n1)"
  [ -n "$srcdir" ] || { log "apt-get source pgvector=${deb} produced no source tree"; rm -rf "$build" "$build.log"; return 1; }
  make -C "$srcdir" -s PG_CONFIG="$PG_CONFIG" OPTFLAGS="" -j"$(nproc)"
  make -C "$srcdir" -s PG_CONFIG="$PG_CONFIG" install
  rm -rf "$build" "$build.log"
  version_ge "$(vector_installed)" "${deb%-*}" \
    || { log "pgvector ${deb} not in place after the build (found: $(vector_installed))"; return 1; }
}

if ! vector_ok; then
  # Debian's versions of the source package, e.g. "0.8.7-1 0.8.0-1"; try the pinned ones in order.
  offered="$(apt-cache showsrc pgvector 2>/dev/null | sed -nE 's/^Version: (.*)$/\1/p' | sort -uV | tr '\n' ' ')"
  built=""
  for v in $PGVECTOR_VERSIONS $PGVECTOR_LAST_RESORT; do
    deb="$(printf '%s\n' $offered | grep -E "^(1:)?${v//./\\.}-" | sort -V | tail -n1 || true)"
    [ -n "$deb" ] || { log "pgvector ${v}: not offered by Debian's deb-src (offered: ${offered:-none})"; continue; }
    if version_ge "$(vector_installed)" "$v"; then built="$(vector_installed)"; break; fi
    if build_pgvector "$deb"; then built="$deb"; break; fi
  done
  installed="$(vector_installed)"
  if [ -z "$installed" ]; then
    log "no pgvector could be built (tried ${PGVECTOR_VERSIONS} ${PGVECTOR_LAST_RESORT})"
    exit 1
  fi
  if ! version_ge "$installed" "$PGVECTOR_MIN"; then
    log "WARNING: pgvector ${installed} is older than ${PGVECTOR_MIN}: it has the HNSW vacuum corruption bug"
    log "WARNING: (pgvector#993); none of ${PGVECTOR_VERSIONS} could be fetched from Debian's source packages here"
  fi
fi
log "done: PostgreSQL ${PG_MAJOR}, plpython3u, pg_cron, pgvector $(vector_installed)"
