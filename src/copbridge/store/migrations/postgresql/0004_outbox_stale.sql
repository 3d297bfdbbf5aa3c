-- The worker expires stale pending rows of every destination in the outbox, configured or not,
-- and each claim those of its own: both read only the stale rows, however long the backlog.
-- (SQLite's index leads with state; here that column would be left unused, the predicate
-- already holding it, and the planner would read the whole table instead.)
CREATE INDEX outbox_stale ON outbox (stale_us, destination) WHERE state = 'pending';
