-- The worker expires stale pending rows of every destination in the outbox, configured or not,
-- and each claim those of its own: both read only the stale rows, however long the backlog.
-- state leads though it is constant here: SQLite, without statistics, ranks indexes by the
-- terms they match, and would take outbox_done (state) and read every pending row instead.
CREATE INDEX outbox_stale ON outbox (state, stale_us, destination) WHERE state = 'pending';
