#!/usr/bin/env bash
# Steward's OCI image, with Podman (or Docker: STEWARD_CONTAINER_ENGINE=docker).
#   scripts/container.sh build [BINARY]   builds localhost/steward:latest from BINARY
#                                         (default: a release build, made when missing)
#   scripts/container.sh run [PORT] [BINARY]
#                                         builds, starts the local model server and runs the
#                                         container on embedded defaults on PORT (8080)
#   scripts/container.sh stop             stops it (SIGTERM, then up to 40 s)
# Podman here needs runc, no default ulimits and the host network (DESIGN.md); the base image is
# built with mmdebstrap from Debian's packages (this system's release, so the binary's C library
# matches) when missing, as public registries are out of reach.
set -euo pipefail
cd "$(dirname "$0")/.."
ENGINE=${STEWARD_CONTAINER_ENGINE:-podman}
CODENAME=$(. /etc/os-release && echo "${VERSION_CODENAME:-bookworm}")
BASE=${STEWARD_BASE:-localhost/steward-debian:$CODENAME}
IMAGE=${STEWARD_IMAGE:-localhost/steward:latest}
NAME=${STEWARD_CONTAINER_NAME:-steward}
FLAGS=()
BUILD_FLAGS=()
if [ "$ENGINE" = podman ]; then
  command -v podman >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq podman runc >/dev/null; }
  mkdir -p .run
  printf '[containers]\ndefault_ulimits = []\n' > .run/containers.conf
  export CONTAINERS_CONF=$PWD/.run/containers.conf
  FLAGS=(--runtime runc)
  # HEALTHCHECK is kept only in the Docker image format.
  BUILD_FLAGS=(--format docker)
fi

# A minimal Debian of this system's release (the Essential packages and the CA bundle, without
# documentation), with a steward user (10001) whose home is /app.
base() {
  if $ENGINE image inspect "$BASE" >/dev/null 2>&1; then return; fi
  command -v mmdebstrap >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mmdebstrap >/dev/null; }
  echo "building the base image $BASE with mmdebstrap (Debian $CODENAME)" >&2
  mmdebstrap --quiet --variant=essential --mode=root --include=ca-certificates \
    --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/locale/*' \
    --customize-hook='echo "steward:x:10001:10001:steward:/app:/usr/sbin/nologin" >> "$1/etc/passwd"' \
    --customize-hook='echo "steward:x:10001:" >> "$1/etc/group"' \
    --customize-hook='mkdir -p "$1/app" && chmod 1777 "$1/tmp"' \
    "$CODENAME" - | $ENGINE import - "$BASE" >/dev/null
}

build() {
  local binary=${1:-target/release/steward}
  [ -n "$binary" ] || binary=target/release/steward
  if [ ! -x "$binary" ]; then
    [ "$binary" = target/release/steward ] || { echo "no binary at $binary" >&2; exit 1; }
    cargo build --release --bin steward
  fi
  scripts/models.sh install
  [ -n "$(ls .models/all-minilm-l6-v2/static-embeddings.bin 2>/dev/null)" ] || "$binary" moderation prepare
  mkdir -p target/container
  objcopy --strip-debug "$binary" target/container/steward
  base
  $ENGINE build "${FLAGS[@]}" "${BUILD_FLAGS[@]}" --build-arg "BASE=$BASE" -t "$IMAGE" -f Containerfile . >&2
  echo "$IMAGE"
}

run() {
  local port=${1:-8080}
  build "${2:-}" >/dev/null
  scripts/model-server.sh start 8081 2
  $ENGINE rm -f "$NAME" >/dev/null 2>&1 || true
  local ulimit=()
  [ "$ENGINE" = podman ] && ulimit=(--ulimit host)
  $ENGINE run -d --name "$NAME" "${FLAGS[@]}" "${ulimit[@]}" --network host \
    -e STEWARD_SERVER__BIND="0.0.0.0:$port" -e STEWARD_SLM__BASE_URL=http://127.0.0.1:8081/v1 "$IMAGE" >/dev/null
  for _ in $(seq 1 240); do
    if curl -sf "http://127.0.0.1:$port/healthz" >/dev/null; then
      echo "steward is running in container $NAME on http://127.0.0.1:$port (logs: $ENGINE logs -f $NAME)" >&2
      echo "a key: $ENGINE exec $NAME steward keys create --tenant demo" >&2
      return
    fi
    sleep 0.5
  done
  $ENGINE logs "$NAME" >&2
  echo "the container did not become healthy" >&2
  exit 1
}

cmd=${1:-build}
shift || true
case "$cmd" in
  build) build "$@" ;;
  run) run "$@" ;;
  stop) $ENGINE stop -t 40 "$NAME" ;;
  *) echo "usage: $0 build [BINARY] | run [PORT] | stop" >&2; exit 2 ;;
esac
