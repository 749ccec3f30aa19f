-- Audit topics (`training.audit`, `policy.audit`) are hash-chained like
-- sessions: `topic` names a chain's topic ('' for the conversation topic,
-- whose chain keys are `tenant:session`; an audit chain's key is
-- `<topic>|<record key>`). `last_at` is when the head moved (ms), so a
-- checkpoint can say how old each head it covers is; `checkpointed_seq` is the
-- head a signed checkpoint last covered, so each head is checkpointed once,
-- by whichever instance gets there first, also across restarts.
ALTER TABLE event_chains ADD COLUMN topic TEXT NOT NULL DEFAULT '';
ALTER TABLE event_chains ADD COLUMN last_at BIGINT NOT NULL DEFAULT 0;
ALTER TABLE event_chains ADD COLUMN checkpointed_seq BIGINT NOT NULL DEFAULT 0;
