-- Outbox rows the retention purge deleted, counted per destination and final state, so the
-- sent and expired totals of GET /destinations (and the expired metric) never go down.
CREATE TABLE outbox_purged (
    destination TEXT NOT NULL,
    state       TEXT NOT NULL,
    total       BIGINT NOT NULL,
    PRIMARY KEY (destination, state)
);
