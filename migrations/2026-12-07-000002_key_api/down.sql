DROP TABLE license_clocks;
DROP TABLE license_addresses;
DROP TABLE machine_activations;
