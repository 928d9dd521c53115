-- Who holds a claim on an outbox row: the id of a sender session, alive
-- exactly as long as that session holds the advisory lock
-- (SENDER_LOCK_CLASS, claimed_by). A claim whose sender is gone (a crashed
-- run) is due again at once instead of after its lease.
ALTER TABLE email_outbox ADD COLUMN claimed_by INTEGER;
