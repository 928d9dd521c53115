-- Every index of `licenses` costs every license a page writes one more
-- entry: at 1M purchases the license upsert is the largest statement of a
-- first import (BENCHMARKS.md, issue 18). No query of licensync looks a
-- license up by its Stripe customer; the column is only shown.
DROP INDEX licenses_stripe_customer_idx;
