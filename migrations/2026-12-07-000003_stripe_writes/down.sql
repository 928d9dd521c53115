DROP INDEX licenses_purchase_idx;
DROP TABLE stripe_writes;
