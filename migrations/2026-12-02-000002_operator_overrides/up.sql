-- Operator overrides (licensing-rules §8): support staff hold a license to
-- a status or pinned values that every later run respects, and reissue
-- compromised keys.

-- NULL: the license follows Stripe. Otherwise a JSON object: what the
-- override holds (`status`: revoked or suspended; `hwid_limit`, `ip_limit`,
-- `expires_at`), `reason`, `by`, `at`, and `stripe`: what Stripe last asked
-- for the held fields, which `licenses release` restores.
ALTER TABLE licenses ADD COLUMN operator_override JSONB;

-- Licenses under override, for `status`.
CREATE INDEX licenses_operator_override_idx ON licenses (id) WHERE operator_override IS NOT NULL;

-- Operator ledger rows say why and who; rows written by runs leave these NULL.
ALTER TABLE license_ledger ADD COLUMN reason TEXT;
ALTER TABLE license_ledger ADD COLUMN operator TEXT;

-- Keys a reissue replaced: no longer valid, kept so that a license server
-- (and support) can tell "this key was replaced" from "this key never existed".
CREATE TABLE license_key_history (
    id BIGSERIAL PRIMARY KEY,
    license_id BIGINT NOT NULL REFERENCES licenses (id),
    key TEXT NOT NULL UNIQUE,
    replaced_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    reason TEXT NOT NULL,
    replaced_by TEXT NOT NULL
);

CREATE INDEX license_key_history_license_idx ON license_key_history (license_id, id);
