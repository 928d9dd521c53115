DROP TABLE license_key_history;
ALTER TABLE license_ledger DROP COLUMN operator;
ALTER TABLE license_ledger DROP COLUMN reason;
DROP INDEX licenses_operator_override_idx;
ALTER TABLE licenses DROP COLUMN operator_override;
