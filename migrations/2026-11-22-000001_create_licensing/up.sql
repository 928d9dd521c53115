-- The license table and everything a run records about it (licensing-rules §5–7).

CREATE TABLE runs (
    id BIGSERIAL PRIMARY KEY,
    mode TEXT NOT NULL CHECK (mode IN ('full', 'incremental', 'since')),
    started_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    finished_at TIMESTAMPTZ,
    outcome TEXT NOT NULL DEFAULT 'running' CHECK (outcome IN ('running', 'succeeded', 'failed')),
    counts JSONB NOT NULL DEFAULT '{}'::jsonb,
    stripe_requests BIGINT NOT NULL DEFAULT 0,
    emails_sent INTEGER NOT NULL DEFAULT 0,
    livemode BOOLEAN,
    note TEXT,
    error TEXT
);

CREATE TABLE licenses (
    id BIGSERIAL PRIMARY KEY,
    key TEXT NOT NULL UNIQUE,
    status TEXT NOT NULL CHECK (status IN ('active', 'suspended', 'expired', 'revoked')),
    product_ids TEXT[] NOT NULL,
    source_kind TEXT NOT NULL CHECK (source_kind IN ('subscription_item', 'checkout_line', 'invoice_line')),
    source_id TEXT NOT NULL,
    stripe_customer_id TEXT,
    stripe_subscription_id TEXT,
    stripe_payment_intent TEXT,
    customer_email TEXT,
    customer_name TEXT,
    quantity INTEGER NOT NULL DEFAULT 1 CHECK (quantity >= 1),
    ip_limit INTEGER CHECK (ip_limit >= 0),
    hwid_limit INTEGER CHECK (hwid_limit >= 0),
    expiration_days INTEGER CHECK (expiration_days >= 1),
    expiration_start TEXT CHECK (expiration_start IN ('CREATION', 'ACTIVATION')),
    expires_at TIMESTAMPTZ,
    livemode BOOLEAN NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT licenses_grant_key UNIQUE (source_kind, source_id)
);

CREATE INDEX licenses_customer_email_idx ON licenses (lower(customer_email));
CREATE INDEX licenses_stripe_customer_idx ON licenses (stripe_customer_id);
CREATE INDEX licenses_stripe_subscription_idx ON licenses (stripe_subscription_id);
CREATE INDEX licenses_payment_intent_idx ON licenses (stripe_payment_intent);
-- The clock sweep looks for active licenses whose time ran out.
CREATE INDEX licenses_active_expiry_idx ON licenses (expires_at) WHERE status = 'active';

-- Append-only: "why did this license change?" always has an answer.
CREATE TABLE license_ledger (
    id BIGSERIAL PRIMARY KEY,
    license_id BIGINT NOT NULL REFERENCES licenses (id),
    run_id BIGINT REFERENCES runs (id),
    action TEXT NOT NULL,
    before JSONB,
    after JSONB NOT NULL,
    stripe_object TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE INDEX license_ledger_license_idx ON license_ledger (license_id, id);

CREATE FUNCTION license_ledger_append_only() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION 'license_ledger is append-only';
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER license_ledger_no_update BEFORE UPDATE OR DELETE ON license_ledger
    FOR EACH ROW EXECUTE FUNCTION license_ledger_append_only();

-- Written in the same transaction as the license it announces (licensing-rules §6).
CREATE TABLE email_outbox (
    id BIGSERIAL PRIMARY KEY,
    license_id BIGINT NOT NULL REFERENCES licenses (id),
    -- 'license_issued' once per license; 'resend:<n>' for each support resend.
    kind TEXT NOT NULL,
    recipient TEXT,
    status TEXT NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'sent', 'failed', 'no_recipient')),
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    next_attempt_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    sent_at TIMESTAMPTZ,
    -- The local part of the Message-ID (`<licensync-outbox-<id>@<sender domain>>`):
    -- stable per row, so a retry after "accepted but not marked sent" repeats it.
    message_id TEXT NOT NULL GENERATED ALWAYS AS ('licensync-outbox-' || id::text) STORED,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT email_outbox_once_per_kind UNIQUE (license_id, kind)
);

CREATE INDEX email_outbox_pending_idx ON email_outbox (next_attempt_at) WHERE status = 'pending';

-- Named cursors, e.g. the Events API cursor of incremental runs.
CREATE TABLE sync_state (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
