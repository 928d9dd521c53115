-- Write-back (`--stripe-write-back`): the Stripe objects whose metadata
-- should show the keys of their licenses. A row is queued in the
-- transaction that issues (or reissues) a license, like an email, and sent
-- after the commit by the run of its account (the run lock makes that run
-- the account's only writer). One row per object: a purchase with three
-- lines queues its payment intent once.
CREATE TABLE stripe_writes (
    id BIGSERIAL PRIMARY KEY,
    -- `licenses.account_key` of the licenses behind it.
    account_key TEXT NOT NULL,
    target_kind TEXT NOT NULL CHECK (target_kind IN ('subscription_item', 'payment_intent', 'invoice')),
    target_id TEXT NOT NULL,
    -- Which licenses' keys the object shows: those of this grant kind whose
    -- source id starts with `purchase` (`si_`, `cs_` or `in_`).
    source_kind TEXT NOT NULL CHECK (source_kind IN ('subscription_item', 'checkout_line', 'invoice_line')),
    purchase TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'sent', 'refused')),
    -- What Stripe last confirmed holding: a write of the same metadata is skipped.
    sent_metadata JSONB,
    attempts INT NOT NULL DEFAULT 0,
    last_error TEXT,
    next_attempt_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    sent_at TIMESTAMPTZ,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT stripe_writes_once UNIQUE (account_key, target_kind, target_id)
);

-- A pass walks one account's pending rows in id order.
CREATE INDEX stripe_writes_pending_idx ON stripe_writes (account_key, id) WHERE status = 'pending';

-- The licenses of one purchase (a Checkout Session's or an invoice's
-- lines, or one subscription item), found from an index. The purchase
-- leads: an index led by the account would tempt the page query, which
-- has no statistics during a first import, into reading the whole account
-- (page_lookup_indexes).
CREATE INDEX licenses_purchase_idx ON licenses (split_part(source_id, '/', 1), source_kind, account_key);
