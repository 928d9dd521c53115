DROP TRIGGER runs_stay ON runs;
DROP TRIGGER licenses_stay ON licenses;
DROP FUNCTION rows_stay();
DROP TRIGGER email_outbox_license_fixed ON email_outbox;
DROP FUNCTION email_outbox_license_fixed();
DROP TRIGGER email_outbox_names_licenses ON email_outbox;
DROP TRIGGER license_ledger_names_runs ON license_ledger;
DROP TRIGGER license_ledger_names_licenses ON license_ledger;
DROP FUNCTION new_rows_name_runs();
DROP FUNCTION new_rows_name_licenses();
ALTER TABLE email_outbox ADD CONSTRAINT email_outbox_license_id_fkey
    FOREIGN KEY (license_id) REFERENCES licenses (id);
ALTER TABLE license_ledger ADD CONSTRAINT license_ledger_run_id_fkey
    FOREIGN KEY (run_id) REFERENCES runs (id);
ALTER TABLE license_ledger ADD CONSTRAINT license_ledger_license_id_fkey
    FOREIGN KEY (license_id) REFERENCES licenses (id);
