-- API keys: only the SHA-256 of a key is stored; the key itself is shown once.
CREATE TABLE api_keys (
    id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    capabilities TEXT NOT NULL,
    key_hash TEXT NOT NULL UNIQUE,
    created_at BIGINT NOT NULL,
    revoked_at BIGINT
);

CREATE TABLE sessions (
    id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    created_at BIGINT NOT NULL
);

-- One row per finished turn (completed, refused, failed or cancelled).
CREATE TABLE turns (
    id TEXT PRIMARY KEY,
    session_id TEXT NOT NULL REFERENCES sessions (id),
    tenant TEXT NOT NULL,
    user_message TEXT NOT NULL,
    assistant_message TEXT NOT NULL,
    finish_reason TEXT NOT NULL,
    policy_verdict TEXT NOT NULL,
    constitution_hash TEXT NOT NULL,
    trace_id TEXT NOT NULL,
    prompt_tokens BIGINT,
    completion_tokens BIGINT,
    created_at BIGINT NOT NULL,
    completed_at BIGINT NOT NULL
);

CREATE INDEX turns_by_session ON turns (session_id, created_at);
