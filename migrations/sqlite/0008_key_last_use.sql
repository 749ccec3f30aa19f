-- When each API key was last used, at most a minute stale (an instance writes it once a minute
-- per key in use), for the console's Keys page.
ALTER TABLE api_keys ADD COLUMN last_used_at BIGINT;
