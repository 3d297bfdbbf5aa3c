-- A claim passes over the rows of a uid that has another row leased: that lookup reads only the
-- leased rows of the uid, however many of its rows wait.
CREATE INDEX outbox_leased ON outbox (destination, uid, lease_until_us)
    WHERE state = 'pending' AND lease_until_us IS NOT NULL;
