-- Transactional outbox: every event is stored here first, and never changed.
CREATE TABLE outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    topic TEXT NOT NULL,
    record_key TEXT NOT NULL,
    session_id TEXT,
    event_type TEXT NOT NULL,
    payload TEXT NOT NULL,
    headers TEXT NOT NULL,
    created_at BIGINT NOT NULL
);

CREATE INDEX outbox_by_session ON outbox (session_id, id);

-- What the relay has still to publish, in id order. A narrow table of its own,
-- so marking rows published deletes a few bytes instead of rewriting the
-- pages that hold the payloads.
CREATE TABLE outbox_pending (
    id BIGINT PRIMARY KEY REFERENCES outbox (id),
    created_at BIGINT NOT NULL
);

-- Head of each session's hash chain: the last seq and the hash of that event.
CREATE TABLE event_chains (
    chain_key TEXT PRIMARY KEY,
    last_seq BIGINT NOT NULL,
    last_hash TEXT NOT NULL
);

-- One relay at a time publishes (per database), so rows are never published
-- twice in the normal case nor reordered within a session.
CREATE TABLE relay_leases (
    name TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    expires_at BIGINT NOT NULL
);
