-- The key API (`licensync serve`). The service writes only these tables;
-- licenses stay the batch job's.

-- The machines that hold a seat of a license. A fingerprint is never
-- stored, only its SHA-256 (lowercase hex).
CREATE TABLE machine_activations (
    id BIGSERIAL PRIMARY KEY,
    license_id BIGINT NOT NULL REFERENCES licenses (id) ON DELETE CASCADE,
    machine_hash TEXT NOT NULL CHECK (machine_hash ~ '^[0-9a-f]{64}$'),
    name TEXT CHECK (char_length(name) <= 100),
    first_seen TIMESTAMPTZ NOT NULL DEFAULT now(),
    last_seen TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT machine_activations_once UNIQUE (license_id, machine_hash)
);

-- The client addresses a license was validated from, for `ip_limit`. They
-- are personal data: rows older than the IP window are deleted.
CREATE TABLE license_addresses (
    license_id BIGINT NOT NULL REFERENCES licenses (id) ON DELETE CASCADE,
    address TEXT NOT NULL,
    last_seen TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (license_id, address)
);
CREATE INDEX license_addresses_last_seen_idx ON license_addresses (last_seen);

-- When a license whose expiry starts at activation was first used (its
-- first VALID answer): recorded once, never moved. The next batch run
-- writes `expires_at` from it.
CREATE TABLE license_clocks (
    license_id BIGINT PRIMARY KEY REFERENCES licenses (id) ON DELETE CASCADE,
    started_at TIMESTAMPTZ NOT NULL
);
