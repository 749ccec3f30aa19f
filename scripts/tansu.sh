#!/usr/bin/env bash
# The tansu Kafka-compatible broker (crates.io, 0.6.0, with SQLite storage).
#   scripts/tansu.sh install        builds it once into $STEWARD_TOOLS_DIR (default ~/.cache/steward-tools)
#                                   and prints the binary's path
#   scripts/tansu.sh start [PORT]   starts a memory-storage broker in the background (pid in .run/)
#   scripts/tansu.sh stop [PORT]
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION=0.6.0
ROOT=${STEWARD_TOOLS_DIR:-$HOME/.cache/steward-tools}/tansu-$VERSION
BIN=$ROOT/bin/tansu

install() {
  if [ ! -x "$BIN" ]; then
    echo "building tansu $VERSION into $ROOT (once; 10-25 minutes on 2 cores)" >&2
    cargo install tansu --locked --version "$VERSION" --features dynostore,libsql --root "$ROOT" >&2
  fi
  echo "$BIN"
}

start() {
  local port=${1:-19092}
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    echo "a broker already listens on 127.0.0.1:$port" >&2
    return
  fi
  install >/dev/null
  mkdir -p .run
  # tansu reads .env and STORAGE_ENGINE-style variables from its working directory: give it an empty one.
  local dir run; dir=$(mktemp -d); run=$PWD/.run
  (cd "$dir" && exec nohup "$BIN" broker --listener-url "tcp://127.0.0.1:$port" --advertised-listener-url "tcp://127.0.0.1:$port" \
      --storage-engine memory://tansu/ --silent >"$run/tansu-$port.log" 2>&1) &
  echo $! >"$run/tansu-$port.pid"
  for _ in $(seq 1 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      echo "broker ready on 127.0.0.1:$port" >&2
      return
    fi
    sleep 0.1
  done
  echo "tansu did not start; see .run/tansu-$port.log" >&2
  exit 1
}

stop() {
  local pidfile=".run/tansu-${1:-19092}.pid"
  if [ -f "$pidfile" ]; then
    kill "$(cat "$pidfile")" 2>/dev/null || true
    rm -f "$pidfile"
  fi
}

cmd=${1:-start}
shift || true
case "$cmd" in
  install) install ;;
  start) start "$@" ;;
  stop) stop "$@" ;;
  *) echo "usage: $0 install|start [port]|stop [port]" >&2; exit 2 ;;
esac
