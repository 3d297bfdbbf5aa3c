-- An audit record may only be appended: numbered 1 or more, above every record there is (a
-- record numbered 0 or less sat outside the chain that verify walks). Appenders hold the audit
-- lock, so the newest number read here is the one they chain after.
CREATE FUNCTION audit_append_after_last() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.seq IS NULL OR NEW.seq < 1
       OR NEW.seq <= (SELECT COALESCE(MAX(seq), 0) FROM audit) THEN
        RAISE EXCEPTION 'audit is append-only: record % must be numbered after the last', NEW.seq;
    END IF;
    RETURN NEW;
END;
$$;
CREATE TRIGGER audit_append_only BEFORE INSERT ON audit
    FOR EACH ROW EXECUTE FUNCTION audit_append_after_last();
