-- Fails while two accounts hold a grant with the same Stripe id: such a
-- database cannot go back to one account per database.
ALTER TABLE email_outbox DROP COLUMN stripe_account;
DROP INDEX runs_account_idx;
ALTER TABLE runs DROP COLUMN stripe_account;
DROP INDEX licenses_account_status_idx;
ALTER TABLE licenses DROP CONSTRAINT licenses_grant_key;
ALTER TABLE licenses ADD CONSTRAINT licenses_grant_key UNIQUE (source_kind, source_id);
ALTER TABLE licenses DROP COLUMN account_key;
ALTER TABLE licenses DROP COLUMN stripe_account;
