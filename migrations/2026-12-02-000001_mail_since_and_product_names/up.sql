-- The Stripe product's name, kept with the license so every email about it
-- (issue, resend) names what the customer bought, without reading Stripe.
ALTER TABLE licenses ADD COLUMN product_name TEXT;

-- `skipped`: a license issued silently because its purchase predates
-- `--mail-since` (adopting an existing account). `mail resend` still sends it.
ALTER TABLE email_outbox DROP CONSTRAINT email_outbox_status_check;
ALTER TABLE email_outbox ADD CONSTRAINT email_outbox_status_check
    CHECK (status IN ('pending', 'sent', 'failed', 'no_recipient', 'skipped'));
