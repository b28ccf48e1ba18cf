#!/usr/bin/env bash
# Build and test the production image with the container engine this machine has (`make image`,
# `make test-image`). Steps, each skipped when already done:
#   engine   a running Docker daemon, else podman (installed from Debian's packages when neither is there
#            and we are root)
#   base     debian:bookworm-slim, pulled; where no image registry is reachable, built from Debian's
#            packages with debootstrap and imported as localhost/debian:bookworm-slim
#   runtime  podman only: a probe container; only if it fails on the host's limits (rlimits, cgroup v1)
#            the OCI runtime wrapper docker/engine/runc-norlimit is registered for podman, and containers
#            then use the host's network
#   wheels   the venv's wheels (torch as its CPU build) downloaded once into the machine's cache
#            (/var/cache/indb/wheels as root), handed to the build so that it downloads nothing
# Usage: docker/image.sh build | test [pytest arguments] | info
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
STATE=${STATE:-.state}
IMAGE=${INDB_IMAGE:-indb:latest}
BUILD_STAGE=${IMAGE%:*}-build:cache
BASE=${INDB_BASE_IMAGE:-debian:bookworm-slim}
LOCAL_BASE=localhost/debian:bookworm-slim
DEBIAN_MIRROR=${INDB_DEBIAN_MIRROR:-http://deb.debian.org/debian}
if [ "$(id -u)" -eq 0 ]; then CACHE=${INDB_CACHE_DIR:-/var/cache/indb}; else CACHE=${INDB_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/indb}; fi
WHEELS=$CACHE/wheels
WRAPPER=/usr/local/lib/indb/runc-norlimit
WRAPPER_CONF=/etc/containers/containers.conf.d/50-indb-runc-norlimit.conf
LOGDIR=$STATE/image
mkdir -p "$LOGDIR"

log() { printf '[image] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }
is_root() { [ "$(id -u)" -eq 0 ]; }
apt_install() {
  is_root && command -v apt-get >/dev/null || die "cannot install $* (needs root and apt-get); install it by hand"
  log "installing Debian packages: $*"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq --no-install-recommends "$@" >"$LOGDIR/apt.log" 2>&1 \
    || { apt-get update -qq >>"$LOGDIR/apt.log" 2>&1 && apt-get install -y -qq --no-install-recommends "$@" >>"$LOGDIR/apt.log" 2>&1; } \
    || { tail -n 20 "$LOGDIR/apt.log" >&2; die "apt-get install $* failed"; }
}

# -- engine -----------------------------------------------------------------------------------------
ENGINE=${INDB_ENGINE:-}
detect_engine() {
  if [ -z "$ENGINE" ]; then
    if command -v docker >/dev/null && docker info >/dev/null 2>&1 && ! docker --version 2>/dev/null | grep -qi podman; then
      ENGINE=docker
    elif command -v podman >/dev/null; then
      ENGINE=podman
    else
      log "no running Docker engine and no podman: installing podman"
      apt_install podman runc jq
      ENGINE=podman
    fi
  fi
  log "engine: $ENGINE ($($ENGINE --version 2>/dev/null | head -n1))"
}

# -- base image -------------------------------------------------------------------------------------
BASE_USED=""
image_exists() { $ENGINE image inspect "$1" >/dev/null 2>&1; }
ensure_base() {
  for candidate in "$BASE" "$LOCAL_BASE"; do
    if image_exists "$candidate"; then BASE_USED=$candidate; log "base image: $candidate (cached)"; return; fi
  done
  local qualified=$BASE
  case "$BASE" in */*) ;; *) qualified=docker.io/library/$BASE ;; esac
  if timeout 300 $ENGINE pull "$qualified" >"$LOGDIR/pull.log" 2>&1; then
    BASE_USED=$BASE; log "base image: $BASE (pulled)"; return
  fi
  log "no image registry reachable ($(tail -n1 "$LOGDIR/pull.log" | cut -c1-120))"
  build_base_from_debian
  BASE_USED=$LOCAL_BASE
}
build_base_from_debian() {
  is_root || die "building the base image with debootstrap needs root"
  command -v debootstrap >/dev/null || apt_install debootstrap
  local dir t0=$SECONDS
  dir=$(mktemp -d /var/tmp/indb-rootfs.XXXXXX)
  log "building $LOCAL_BASE from Debian packages (debootstrap --variant=minbase bookworm)"
  debootstrap --variant=minbase bookworm "$dir" "$DEBIAN_MIRROR" >"$LOGDIR/debootstrap.log" 2>&1 \
    || { tail -n 20 "$LOGDIR/debootstrap.log" >&2; rm -rf "$dir"; die "debootstrap failed"; }
  # Like Debian's official slim image: its package sources (updates and security too), no documentation,
  # manual pages or translations installed later, no apt lists or caches.
  rm -f "$dir/etc/apt/sources.list" "$dir/etc/resolv.conf" "$dir/etc/hostname"
  cat >"$dir/etc/apt/sources.list.d/debian.sources" <<SOURCES
Types: deb
URIs: ${DEBIAN_MIRROR}
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: ${DEBIAN_MIRROR}-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SOURCES
  cat >"$dir/etc/dpkg/dpkg.cfg.d/docker" <<'EXCLUDES'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/linda/*
path-exclude /usr/share/locale/*
EXCLUDES
  find "$dir/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete
  rm -rf "$dir/usr/share/man/"* "$dir/usr/share/info/"* "$dir/usr/share/locale/"* \
    "$dir/var/lib/apt/lists/"* "$dir/var/cache/apt/"*.bin "$dir/var/cache/apt/archives/"*.deb "$dir/var/log/"*
  tar --numeric-owner -C "$dir" -c . | $ENGINE import --change 'CMD ["bash"]' - "$LOCAL_BASE" >"$LOGDIR/import.log" 2>&1 \
    || { tail -n 5 "$LOGDIR/import.log" >&2; rm -rf "$dir"; die "importing the base image failed"; }
  rm -rf "$dir"
  log "base image: $LOCAL_BASE built in $((SECONDS - t0)) s"
}

# -- runtime (podman) -------------------------------------------------------------------------------
NETWORK=${INDB_IMAGE_NETWORK:-}
probe() { $ENGINE run --rm --network=host "$BASE_USED" true >"$LOGDIR/probe.log" 2>&1; }
ensure_runtime() {
  if [ "$ENGINE" = podman ]; then
    if ! probe; then
      grep -qiE 'rlimit|cgroup|operation not permitted' "$LOGDIR/probe.log" \
        || { cat "$LOGDIR/probe.log" >&2; die "podman cannot run a container on this host"; }
      log "this host refuses what runc does by default ($(grep -oiE 'error setting rlimit[^:]*|cgroup[^:]*' "$LOGDIR/probe.log" | head -n1)):"
      log "registering the OCI runtime wrapper $WRAPPER (runc without rlimits) in $WRAPPER_CONF"
      is_root || die "registering the runtime wrapper needs root"
      command -v runc >/dev/null && command -v jq >/dev/null || apt_install runc jq
      install -D -m 755 docker/engine/runc-norlimit "$WRAPPER"
      mkdir -p "$(dirname "$WRAPPER_CONF")"
      printf '# indb (docker/image.sh): this host forbids raising rlimits in a container\n[engine]\nruntime = "runc"\n\n[engine.runtimes]\nrunc = ["%s"]\n' \
        "$WRAPPER" >"$WRAPPER_CONF"
      probe || { cat "$LOGDIR/probe.log" >&2; die "podman still cannot run a container with the wrapper"; }
    elif [ -f "$WRAPPER_CONF" ]; then
      # Registered by an earlier run: keep the copy of the wrapper current.
      cmp -s docker/engine/runc-norlimit "$WRAPPER" || install -D -m 755 docker/engine/runc-norlimit "$WRAPPER"
    fi
    # A host that needs the wrapper is a nested sandbox: its containers share the host's network.
    if [ -z "$NETWORK" ]; then
      if [ -f "$WRAPPER_CONF" ]; then NETWORK=host; else NETWORK=bridge; fi
    fi
  fi
  NETWORK=${NETWORK:-bridge}
  log "container network: $NETWORK"
}

# -- wheels -----------------------------------------------------------------------------------------
WHEELS_OK=0
fill_wheels() {
  local py="" candidate torch
  for candidate in "$VENV/bin/python" python3.11; do
    if "$candidate" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' 2>/dev/null \
      && "$candidate" -m pip --version >/dev/null 2>&1; then py=$candidate; break; fi
  done
  if [ -z "$py" ]; then log "wheels: no Python 3.11 with pip here; the build downloads them itself"; return; fi
  torch=$(sed -n 's/^torch==//p' requirements.lock)
  mkdir -p "$WHEELS"
  local stamp
  stamp="$WHEELS/.complete-$(sha256sum requirements.lock | cut -c1-16)"
  if [ -f "$stamp" ]; then WHEELS_OK=1; log "wheels: cache $WHEELS (complete for this requirements.lock)"; return; fi
  log "wheels: cache $WHEELS (torch $torch, CPU build)"
  if ! "$py" -m pip download --no-deps --only-binary=:all: -d "$WHEELS" "torch==${torch}+cpu" >"$LOGDIR/wheels.log" 2>&1; then
    log "wheels: no CPU build of torch $torch reachable by this host's pip; the build takes it from its TORCH_INDEX_URL"
    return
  fi
  if ! "$py" -m pip download --only-binary=:all: --find-links "$WHEELS" -d "$WHEELS" -r requirements.lock >>"$LOGDIR/wheels.log" 2>&1; then
    tail -n 20 "$LOGDIR/wheels.log" >&2
    die "downloading the wheels of requirements.lock failed"
  fi
  if find "$WHEELS" -name '*.whl' | grep -qiE '/(nvidia|cuda|triton)'; then
    die "CUDA wheels were downloaded into $WHEELS; remove them and check requirements.lock"
  fi
  touch "$stamp"
  WHEELS_OK=1
}

prepare() {
  detect_engine
  ensure_base
  ensure_runtime
  fill_wheels
}

build() {
  prepare
  local args=(build -f docker/Dockerfile -t "$IMAGE" --build-arg "BASE_IMAGE=$BASE_USED")
  if [ "$WHEELS_OK" = 1 ]; then
    args+=(--build-context "wheels=$WHEELS" --build-arg WHEELS_ONLY=1 --build-arg TORCH_INDEX_URL=)
  fi
  if [ "$ENGINE" = podman ]; then
    # docker format: OCI image configs have no HEALTHCHECK
    args+=(--format docker --layers --ignorefile docker/Dockerfile.dockerignore)
  fi
  if [ "$NETWORK" = host ]; then args+=(--network=host); fi
  log "building $IMAGE: $ENGINE ${args[*]} . (log: $LOGDIR/build.log)"
  local t0=$SECONDS
  # The build stage gets a tag of its own, so that the clean-up below keeps it as the next build's cache.
  if ! { $ENGINE "${args[@]/#$IMAGE/$BUILD_STAGE}" --target build . && $ENGINE "${args[@]}" .; } >"$LOGDIR/build.log" 2>&1; then
    tail -n 40 "$LOGDIR/build.log" >&2
    die "the image build failed"
  fi
  # Images of earlier builds that no tag holds any more (each 2+ GB); only this Dockerfile's (by label).
  for title in indb indb-build; do
    $ENGINE image prune -f --filter "label=org.opencontainers.image.title=$title" >/dev/null 2>&1 || true
  done
  local size
  size=$($ENGINE image inspect -f '{{.Size}}' "$IMAGE")
  log "built $IMAGE in $((SECONDS - t0)) s: $((size / 1000 / 1000)) MB"
  printf '%s build %s s, %s bytes\n' "$(date -u +%FT%TZ)" "$((SECONDS - t0))" "$size" >>"$LOGDIR/build-times.log"
}

run_tests() {
  [ -x "$VENV/bin/python" ] || die "$VENV is missing: run make venv"
  # tests/image reads these; the image is built once (by `build`) for the whole run
  export INDB_IMAGE="$IMAGE" INDB_ENGINE="$ENGINE" INDB_IMAGE_NETWORK="$NETWORK" TESTCONTAINERS_RYUK_DISABLED=true
  if [ "$ENGINE" = podman ]; then
    # testcontainers speaks the Docker API: podman serves it on a socket of its own for this run
    SOCK=$(mktemp -u "/tmp/indb-podman.XXXXXX").sock
    podman system service --time=0 "unix://$SOCK" >"$LOGDIR/podman-service.log" 2>&1 &
    SERVICE_PID=$!
    trap 'kill "$SERVICE_PID" 2>/dev/null || true; rm -f "$SOCK"' EXIT
    for _ in $(seq 100); do [ -S "$SOCK" ] && break; sleep 0.1; done
    [ -S "$SOCK" ] || die "podman system service did not start (see $LOGDIR/podman-service.log)"
    export DOCKER_HOST="unix://$SOCK"
  fi
  set +e
  "$VENV/bin/python" -m pytest tests/image "$@"
  local rc=$?
  set -e
  [ "$rc" -eq 5 ] && log "pytest: no tests were collected"
  return "$rc"
}

case "${1:-}" in
  build) build ;;
  test) shift; detect_engine; ensure_base; ensure_runtime; run_tests "$@" ;;
  info) prepare; printf 'engine=%s base=%s network=%s wheels=%s image=%s\n' "$ENGINE" "$BASE_USED" "$NETWORK" "$WHEELS_OK" "$IMAGE" ;;
  *) echo "usage: $0 build | test [pytest arguments] | info" >&2; exit 2 ;;
esac
