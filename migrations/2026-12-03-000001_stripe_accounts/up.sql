-- Several Stripe accounts in one deployment (licensing-rules §9): every
-- license, run and outbox row belongs to one Stripe account. NULL is the
-- API key's own account, so a single-account deployment's rows migrate in
-- place and keep meaning what they meant. Ledger rows and key history
-- belong to the account of their license.

ALTER TABLE licenses ADD COLUMN stripe_account TEXT
    CHECK (stripe_account ~ '^acct_[A-Za-z0-9]+$');
-- The account as a non-null value, so that the natural key can include it
-- (NULLs are distinct in a UNIQUE constraint before PostgreSQL 15, and
-- the embedded database uses whatever PostgreSQL the machine has).
ALTER TABLE licenses ADD COLUMN account_key TEXT NOT NULL
    GENERATED ALWAYS AS (COALESCE(stripe_account, '')) STORED;
-- Stripe ids are unique across accounts in production, but nothing in
-- licensync relies on it: a grant is (account, kind, id). The account comes
-- last so that lookups by (kind, id) keep using the index.
ALTER TABLE licenses DROP CONSTRAINT licenses_grant_key;
ALTER TABLE licenses ADD CONSTRAINT licenses_grant_key UNIQUE (source_kind, source_id, account_key);
-- `status` and metrics count licenses per account and status.
CREATE INDEX licenses_account_status_idx ON licenses (account_key, status);

ALTER TABLE runs ADD COLUMN stripe_account TEXT
    CHECK (stripe_account ~ '^acct_[A-Za-z0-9]+$');
CREATE INDEX runs_account_idx ON runs (stripe_account, id);

-- Each account's emails go out with its own sender and templates.
ALTER TABLE email_outbox ADD COLUMN stripe_account TEXT
    CHECK (stripe_account ~ '^acct_[A-Za-z0-9]+$');
