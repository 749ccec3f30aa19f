#!/usr/bin/env bash
# Runs Steward on embedded defaults (SQLite under ./data, no Redis, no Kafka)
# with the local model server on 127.0.0.1:8081. Ends with Steward serving
# 127.0.0.1:8080 in the foreground; Ctrl-C stops both.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v cargo >/dev/null || { echo "cargo is required (https://rustup.rs)" >&2; exit 1; }
command -v python3 >/dev/null || { echo "python3 is required" >&2; exit 1; }

scripts/models.sh install
scripts/model-server.sh start 8081 2
started_model=$([ -f .run/model-server-8081.pid ] && echo yes || echo no)
cleanup() { [ "$started_model" = yes ] && scripts/model-server.sh stop 8081; }
trap cleanup EXIT

cargo build --quiet --bin steward
./target/debug/steward moderation prepare
./target/debug/steward migrate
cat >&2 <<'MSG'

Steward is starting on http://127.0.0.1:8080 (logs below, JSON).
Get an API key in another terminal:
  KEY=$(./target/debug/steward keys create --tenant demo --capabilities chat,training:admin)
Then stream a turn:
  curl -N http://127.0.0.1:8080/v1/chat/stream -H "Authorization: Bearer $KEY" \
       -H 'content-type: application/json' -d '{"message": "Write a haiku about rivers."}'

MSG
# The model server above has 2 parallel slots: model calls beyond wait, tenants served in turn.
STEWARD_SLM__MAX_CONCURRENT=${STEWARD_SLM__MAX_CONCURRENT:-2} ./target/debug/steward serve
