-- The category code an answer was cut on by the output guard (NULL when it was not), so the
-- console can find turns refused on output by category as it finds those refused on input
-- (whose codes are in policy_verdict). Turns stored before this column are filled in from
-- their own `turn.refused` event (stage `output`) in the outbox.
ALTER TABLE turns ADD COLUMN output_code TEXT;

UPDATE turns SET output_code = (
    SELECT json_extract(o.payload, '$.data.categories[0].code') FROM outbox o
    WHERE o.session_id = turns.session_id AND o.event_type = 'turn.refused'
      AND json_extract(o.payload, '$.turn_id') = turns.id
      AND json_extract(o.payload, '$.data.stage') = 'output'
    LIMIT 1
)
WHERE finish_reason = 'refused' AND policy_verdict = 'allow';
