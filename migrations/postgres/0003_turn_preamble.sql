-- The caller-supplied messages that preceded the user message (OpenAI facade),
-- as a JSON array of {role, content}: the trail shows what the model was given.
ALTER TABLE turns ADD COLUMN preamble TEXT NOT NULL DEFAULT '[]';
