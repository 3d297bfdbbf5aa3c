-- copbridge schema v1 (PostgreSQL). Times are integer microseconds since the Unix epoch, UTC.
CREATE TABLE detections (
    seq          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id           TEXT NOT NULL UNIQUE,
    body_hash    TEXT NOT NULL,
    time_us      BIGINT NOT NULL,
    received_us  BIGINT NOT NULL,
    sensor_id    TEXT NOT NULL,
    label        TEXT NOT NULL,
    detection    TEXT NOT NULL,
    answer       TEXT NOT NULL,
    cot_xml      BYTEA NOT NULL,
    image_sha256 TEXT
);
CREATE INDEX detections_time ON detections (time_us);
CREATE INDEX detections_sensor ON detections (sensor_id, seq);
CREATE INDEX detections_label ON detections (label, seq);

CREATE TABLE events (
    seq          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    uid          TEXT NOT NULL,
    cot_type     TEXT NOT NULL,
    kind         TEXT NOT NULL,
    detection_id TEXT,
    time_us      BIGINT NOT NULL,
    stale_us     BIGINT NOT NULL,
    created_us   BIGINT NOT NULL,
    payload      BYTEA NOT NULL
);
CREATE INDEX events_stale ON events (stale_us);
CREATE INDEX events_uid ON events (uid, time_us);

CREATE TABLE outbox (
    id              BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_seq       BIGINT NOT NULL REFERENCES events (seq),
    destination     TEXT NOT NULL,
    uid             TEXT NOT NULL,
    time_us         BIGINT NOT NULL,
    stale_us        BIGINT NOT NULL,
    state           TEXT NOT NULL DEFAULT 'pending',
    attempts        BIGINT NOT NULL DEFAULT 0,
    next_attempt_us BIGINT NOT NULL DEFAULT 0,
    claim_token     TEXT,
    lease_until_us  BIGINT,
    last_error      TEXT,
    created_us      BIGINT NOT NULL,
    done_us         BIGINT
);
CREATE INDEX outbox_pending ON outbox (destination, state, id);
CREATE INDEX outbox_uid ON outbox (destination, uid, state);
CREATE INDEX outbox_done ON outbox (state, done_us);

CREATE TABLE images (
    sha256     TEXT PRIMARY KEY,
    media_type TEXT NOT NULL,
    size       BIGINT NOT NULL,
    data       BYTEA,
    created_us BIGINT NOT NULL
);

CREATE TABLE audit (
    seq       BIGINT PRIMARY KEY,
    at_us     BIGINT NOT NULL,
    kind      TEXT NOT NULL,
    actor     TEXT,
    subject   TEXT,
    data      TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash      TEXT NOT NULL
);
CREATE INDEX audit_kind ON audit (kind, seq);
CREATE FUNCTION audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit is append-only: % refused', TG_OP;
END;
$$;
CREATE TRIGGER audit_no_change BEFORE UPDATE OR DELETE ON audit
    FOR EACH ROW EXECUTE FUNCTION audit_append_only();
CREATE TRIGGER audit_no_truncate BEFORE TRUNCATE ON audit
    FOR EACH STATEMENT EXECUTE FUNCTION audit_append_only();
REVOKE UPDATE, DELETE, TRUNCATE ON audit FROM PUBLIC;

CREATE TABLE api_keys (
    key_id       TEXT PRIMARY KEY,
    name         TEXT NOT NULL,
    secret_hash  TEXT NOT NULL,
    scopes       TEXT NOT NULL,
    created_us   BIGINT NOT NULL,
    expires_us   BIGINT,
    last_used_us BIGINT,
    revoked_us   BIGINT
);

CREATE TABLE refresh_tokens (
    jti        TEXT PRIMARY KEY,
    family     TEXT NOT NULL,
    key_id     TEXT NOT NULL,
    issued_us  BIGINT NOT NULL,
    expires_us BIGINT NOT NULL,
    used_us    BIGINT,
    revoked_us BIGINT
);
CREATE INDEX refresh_family ON refresh_tokens (family);

CREATE TABLE revoked_tokens (
    jti        TEXT PRIMARY KEY,
    expires_us BIGINT NOT NULL
);

CREATE TABLE platform_marks (
    sensor_id  TEXT PRIMARY KEY,
    emitted_us BIGINT NOT NULL
);
