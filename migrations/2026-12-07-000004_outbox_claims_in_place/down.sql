ALTER TABLE email_outbox RESET (fillfactor);
CREATE INDEX email_outbox_pending_idx ON email_outbox (next_attempt_at) WHERE status = 'pending';
