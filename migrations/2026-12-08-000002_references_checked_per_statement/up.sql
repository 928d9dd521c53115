-- A page writes its ledger rows and its outbox rows with one statement each
-- (about 130 rows a page). A foreign key checks every row on its own and
-- locks the row it names (FOR KEY SHARE): the license for the ledger and
-- the outbox, the run for the ledger. At a first import that was about
-- two thirds of the ledger insert's time and half the outbox insert's
-- (BENCHMARKS.md, issue 18).
--
-- The same rule now holds once per statement: after an insert, its new
-- rows are joined to the table they name, and the statement fails when one
-- names nothing (SQLSTATE 23503, as a foreign key would).
--
-- A foreign key also keeps the rows it points at from going away. Licenses
-- and runs never go away: a license is revoked or expired, never removed,
-- and a run's row is its record. The database now refuses to delete,
-- truncate or renumber either, so what a ledger or outbox row names stays.

ALTER TABLE license_ledger DROP CONSTRAINT license_ledger_license_id_fkey;
ALTER TABLE license_ledger DROP CONSTRAINT license_ledger_run_id_fkey;
ALTER TABLE email_outbox DROP CONSTRAINT email_outbox_license_id_fkey;

CREATE FUNCTION new_rows_name_licenses() RETURNS trigger AS $$
DECLARE
    missing BIGINT;
BEGIN
    -- A probe of the primary key per new row, whatever the statistics say
    -- (a young table has none, and a hash join would read all of it).
    SELECT n.license_id INTO missing FROM new_rows n
    LEFT JOIN LATERAL (SELECT l.id FROM licenses l WHERE l.id = n.license_id LIMIT 1) found ON true
    WHERE found.id IS NULL
    LIMIT 1;
    IF FOUND THEN
        RAISE foreign_key_violation
            USING MESSAGE = format('%s.license_id %s names no license', TG_TABLE_NAME, missing);
    END IF;
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;

CREATE FUNCTION new_rows_name_runs() RETURNS trigger AS $$
DECLARE
    missing BIGINT;
BEGIN
    SELECT n.run_id INTO missing FROM new_rows n
    LEFT JOIN LATERAL (SELECT r.id FROM runs r WHERE r.id = n.run_id LIMIT 1) found ON true
    WHERE n.run_id IS NOT NULL AND found.id IS NULL
    LIMIT 1;
    IF FOUND THEN
        RAISE foreign_key_violation
            USING MESSAGE = format('%s.run_id %s names no run', TG_TABLE_NAME, missing);
    END IF;
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER license_ledger_names_licenses AFTER INSERT ON license_ledger
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION new_rows_name_licenses();
CREATE TRIGGER license_ledger_names_runs AFTER INSERT ON license_ledger
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION new_rows_name_runs();
CREATE TRIGGER email_outbox_names_licenses AFTER INSERT ON email_outbox
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION new_rows_name_licenses();
-- The ledger is append-only (its first migration) and the outbox's
-- license_id is never written after the insert: no update can make a row
-- name something else.
CREATE FUNCTION email_outbox_license_fixed() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION 'email_outbox.license_id never changes';
END;
$$ LANGUAGE plpgsql;
CREATE TRIGGER email_outbox_license_fixed BEFORE UPDATE OF license_id ON email_outbox
    FOR EACH STATEMENT EXECUTE FUNCTION email_outbox_license_fixed();

CREATE FUNCTION rows_stay() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION '% rows are never deleted, truncated or renumbered', TG_TABLE_NAME;
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER licenses_stay BEFORE DELETE OR TRUNCATE OR UPDATE OF id ON licenses
    FOR EACH STATEMENT EXECUTE FUNCTION rows_stay();
CREATE TRIGGER runs_stay BEFORE DELETE OR TRUNCATE OR UPDATE OF id ON runs
    FOR EACH STATEMENT EXECUTE FUNCTION rows_stay();
