CREATE INDEX licenses_stripe_customer_idx ON licenses (stripe_customer_id);
