-- Facts every process sharing this store must agree on, written by the first that starts:
-- today the fingerprint of the key pepper (an HMAC of a constant under it), so that a replica
-- given another pepper refuses to start instead of refusing every key with a 401.
CREATE TABLE service_marks (
    name  TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
