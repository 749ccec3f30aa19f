-- Sessions of the console (/console): a browser signed in with an API key. The cookie holds a
-- random token; only its SHA-256 is stored, with the SHA-256 of the key signed in with (as
-- api_keys stores it), so every request checks the key again and a revoked key ends its sessions.
CREATE TABLE console_sessions (
    token_hash TEXT PRIMARY KEY,
    key_hash TEXT NOT NULL,
    csrf TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    seen_at BIGINT NOT NULL,
    ended_at BIGINT
);
