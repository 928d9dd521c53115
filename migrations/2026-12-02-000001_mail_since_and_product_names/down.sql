-- Skipped emails become what they were before this migration existed: never queued.
DELETE FROM email_outbox WHERE status = 'skipped';
ALTER TABLE email_outbox DROP CONSTRAINT email_outbox_status_check;
ALTER TABLE email_outbox ADD CONSTRAINT email_outbox_status_check
    CHECK (status IN ('pending', 'sent', 'failed', 'no_recipient'));
ALTER TABLE licenses DROP COLUMN product_name;
