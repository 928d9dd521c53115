-- Every query a page runs is answered from an index holding both what it
-- looks up and the account, at any size and for any number of accounts.
--
-- Before this, a page's licenses were found through single-column indexes
-- on the subscription and the payment intent and the account checked as a
-- filter. During a first import the table has no fresh statistics, so
-- PostgreSQL guessed `account_key = ''` to be rare, chose the
-- `(account_key, status)` index instead, and read the whole account for
-- every page: a first import turned quadratic (BENCHMARKS.md, issue 18).
-- With the account inside each lookup index, the index that matches the
-- page's own keys is always the cheaper one, whatever the statistics say.
CREATE INDEX licenses_subscription_account_idx ON licenses (stripe_subscription_id, account_key);
CREATE INDEX licenses_payment_intent_account_idx ON licenses (stripe_payment_intent, account_key);
DROP INDEX licenses_stripe_subscription_idx;
DROP INDEX licenses_payment_intent_idx;

-- The outbox claim walks one account's pending rows in id order from where
-- the sender's pass left off. The old partial index on `next_attempt_at`
-- could not serve that order, so each claim read every row of the outbox.
CREATE INDEX email_outbox_pending_account_idx ON email_outbox (COALESCE(stripe_account, ''), id)
    WHERE status = 'pending';
