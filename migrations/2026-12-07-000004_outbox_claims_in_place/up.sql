-- A claim writes `attempts`, `next_attempt_at` and `claimed_by` of up to
-- 500 rows at a time, and every email is claimed once. With an index on
-- none of those columns and room left on each page, PostgreSQL rewrites a
-- claimed row in place (a HOT update) instead of adding an entry for it to
-- every index of the table: half the claim's cost (BENCHMARKS.md, issue 18).
--
-- `email_outbox_pending_idx` indexed `next_attempt_at`, and no query has
-- used it since claims walk `email_outbox_pending_account_idx`. The
-- fillfactor leaves 60% of each new page free, which holds the new version
-- of every row on it; rows written before this keep their full pages.
DROP INDEX email_outbox_pending_idx;
ALTER TABLE email_outbox SET (fillfactor = 40);
