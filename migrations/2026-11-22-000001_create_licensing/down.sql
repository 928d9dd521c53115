DROP TABLE sync_state;
DROP TABLE email_outbox;
DROP TRIGGER license_ledger_no_update ON license_ledger;
DROP TABLE license_ledger;
DROP FUNCTION license_ledger_append_only();
DROP TABLE licenses;
DROP TABLE runs;
