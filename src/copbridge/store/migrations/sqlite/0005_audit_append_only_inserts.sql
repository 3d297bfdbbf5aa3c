-- An audit record may only be appended: numbered 1 or more, above every record there is.
-- INSERT OR REPLACE went around the UPDATE and DELETE triggers (SQLite fires no DELETE trigger
-- for the row a REPLACE removes), and a record numbered 0 or less sat outside the chain that
-- verify walks. This trigger runs before the conflict is resolved, so both are refused.
CREATE TRIGGER audit_append_only BEFORE INSERT ON audit
WHEN NEW.seq IS NULL OR NEW.seq < 1 OR NEW.seq <= (SELECT COALESCE(MAX(seq), 0) FROM audit)
BEGIN SELECT RAISE(ABORT, 'audit is append-only: a record must be numbered after the last'); END;
