-- copbridge schema v1 (SQLite). Times are integer microseconds since the Unix epoch, UTC.
CREATE TABLE detections (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    id           TEXT NOT NULL UNIQUE,
    body_hash    TEXT NOT NULL,
    time_us      INTEGER NOT NULL,
    received_us  INTEGER NOT NULL,
    sensor_id    TEXT NOT NULL,
    label        TEXT NOT NULL,
    detection    TEXT NOT NULL,
    answer       TEXT NOT NULL,
    cot_xml      BLOB NOT NULL,
    image_sha256 TEXT
);
CREATE INDEX detections_time ON detections (time_us);
CREATE INDEX detections_sensor ON detections (sensor_id, seq);
CREATE INDEX detections_label ON detections (label, seq);

CREATE TABLE events (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    uid          TEXT NOT NULL,
    cot_type     TEXT NOT NULL,
    kind         TEXT NOT NULL,
    detection_id TEXT,
    time_us      INTEGER NOT NULL,
    stale_us     INTEGER NOT NULL,
    created_us   INTEGER NOT NULL,
    payload      BLOB NOT NULL
);
CREATE INDEX events_stale ON events (stale_us);
CREATE INDEX events_uid ON events (uid, time_us);

CREATE TABLE outbox (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    event_seq       INTEGER NOT NULL REFERENCES events (seq),
    destination     TEXT NOT NULL,
    uid             TEXT NOT NULL,
    time_us         INTEGER NOT NULL,
    stale_us        INTEGER NOT NULL,
    state           TEXT NOT NULL DEFAULT 'pending',
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_us INTEGER NOT NULL DEFAULT 0,
    claim_token     TEXT,
    lease_until_us  INTEGER,
    last_error      TEXT,
    created_us      INTEGER NOT NULL,
    done_us         INTEGER
);
CREATE INDEX outbox_pending ON outbox (destination, state, id);
CREATE INDEX outbox_uid ON outbox (destination, uid, state);
CREATE INDEX outbox_done ON outbox (state, done_us);

CREATE TABLE images (
    sha256     TEXT PRIMARY KEY,
    media_type TEXT NOT NULL,
    size       INTEGER NOT NULL,
    data       BLOB,
    created_us INTEGER NOT NULL
);

CREATE TABLE audit (
    seq       INTEGER PRIMARY KEY,
    at_us     INTEGER NOT NULL,
    kind      TEXT NOT NULL,
    actor     TEXT,
    subject   TEXT,
    data      TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash      TEXT NOT NULL
);
CREATE INDEX audit_kind ON audit (kind, seq);
CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit
BEGIN SELECT RAISE(ABORT, 'audit is append-only: UPDATE refused'); END;
CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit
BEGIN SELECT RAISE(ABORT, 'audit is append-only: DELETE refused'); END;

CREATE TABLE api_keys (
    key_id       TEXT PRIMARY KEY,
    name         TEXT NOT NULL,
    secret_hash  TEXT NOT NULL,
    scopes       TEXT NOT NULL,
    created_us   INTEGER NOT NULL,
    expires_us   INTEGER,
    last_used_us INTEGER,
    revoked_us   INTEGER
);

CREATE TABLE refresh_tokens (
    jti        TEXT PRIMARY KEY,
    family     TEXT NOT NULL,
    key_id     TEXT NOT NULL,
    issued_us  INTEGER NOT NULL,
    expires_us INTEGER NOT NULL,
    used_us    INTEGER,
    revoked_us INTEGER
);
CREATE INDEX refresh_family ON refresh_tokens (family);

CREATE TABLE revoked_tokens (
    jti        TEXT PRIMARY KEY,
    expires_us INTEGER NOT NULL
);

CREATE TABLE platform_marks (
    sensor_id  TEXT PRIMARY KEY,
    emitted_us INTEGER NOT NULL
);
