-- The training lock, as Steward's own database remembers it, per tenant: the
-- highest fencing token ever granted (so tokens never go backwards, even when
-- Redis loses its memory) and the lock last granted and not yet ended (so a
-- lock that vanishes without a `disabled` or `expired` record is noticed, and
-- audited once as `training.lost`).
CREATE TABLE training_fencing (
    tenant TEXT PRIMARY KEY,
    high_water BIGINT NOT NULL,
    held_token BIGINT,
    held_owner TEXT,
    held_until BIGINT
);
