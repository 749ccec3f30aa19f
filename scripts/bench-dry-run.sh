#!/usr/bin/env bash
# Times `steward constitution dry-run` over N stored turns (default 10000) in a fresh SQLite
# database: the user messages are the held-out labelled requests (tests/data/moderation,
# numbered so that no two are alike and no cache helps), each with the same harmless answer.
# Every moderation layer is on, as configured in config/. Usage: scripts/bench-dry-run.sh [N]
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-10000}
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
export STEWARD_DATABASE__URL="sqlite://$dir/bench.db?mode=rwc"
export STEWARD_POLICY__SIGNING_KEY=${STEWARD_POLICY__SIGNING_KEY:-bench-dry-run-signing-key-0123456789abcdef}
export STEWARD_TELEMETRY__LOG_LEVEL=warn
cargo build --quiet --release --bin steward
./target/release/steward migrate
python3 - "$dir/bench.db" "$n" <<'PY'
import json, sqlite3, sys, time, uuid
path, n = sys.argv[1], int(sys.argv[2])
rows = [json.loads(line) for line in open("tests/data/moderation/heldout.jsonl")]
answer = "The sea is calm and the light is soft. Boats rest by the old pier. Gulls circle above the harbour while the tide turns."
db, now = sqlite3.connect(path), int(time.time() * 1000)
db.execute("INSERT INTO sessions (id, tenant, created_at) VALUES ('bench-session', 'bench', ?)", (now,))
db.executemany(
    "INSERT INTO turns (id, session_id, tenant, user_message, assistant_message, finish_reason, policy_verdict, constitution_hash,"
    " trace_id, prompt_tokens, completion_tokens, created_at, completed_at, preamble) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
    [(str(uuid.uuid4()), "bench-session", "bench", f"{rows[i % len(rows)]['text']} ({i})", answer, "stop", "allow",
      "sha256:" + "0" * 64, uuid.uuid4().hex, 12, 32, now, now, "[]") for i in range(n)])
db.commit()
PY
start=$(date +%s.%N)
timer=(); [ -x /usr/bin/time ] && timer=(/usr/bin/time -o "$dir/rss" -f %M)
"${timer[@]}" ./target/release/steward constitution dry-run config/constitution.toml --since 1h --limit "$n" >"$dir/report.json"
end=$(date +%s.%N)
python3 - "$dir/report.json" "$start" "$end" "$dir/rss" <<'PY'
import json, os, sys
report = json.load(open(sys.argv[1]))["report"]
seconds = float(sys.argv[3]) - float(sys.argv[2])
rss = f", peak RSS {int(open(sys.argv[4]).read().split()[-1]) / 1024:.0f} MiB" if os.path.exists(sys.argv[4]) else ""
print(f"{report['judged']} turns judged in {seconds:.1f} s ({report['judged'] / seconds:.0f} turns/s, model loading included{rss}); "
      f"{sum(report['allow_to_refuse'].values())} would now be refused")
PY
