-- The decision log's day partitions, made by a function that runs as the owner of the schema.
--
-- Only the owner of decision_log may create a partition of it. The server creates each day's
-- partition on that day's first row; when it runs as a role that owns nothing (docs/operations.md,
-- "Two database roles"), it calls this function, which runs with its owner's rights (SECURITY
-- DEFINER) and can create exactly one thing: the partition of one day, named and bounded as
-- the server names and bounds it (decision_log_YYYYMMDD, [day, day + 1) in microseconds).
-- Dropping partitions stays with the owner (`assent audit prune`).
CREATE FUNCTION decision_log_create_partition(day BIGINT) RETURNS VOID
    LANGUAGE plpgsql SECURITY DEFINER AS $$
DECLARE
    micros_per_day CONSTANT BIGINT := 86400000000;
BEGIN
    -- 1970-01-01 to 9999-12-31: an eight-digit date in the name.
    IF day < 0 OR day > 2932896 THEN
        RAISE EXCEPTION 'decision_log_create_partition: day % is out of range', day;
    END IF;
    EXECUTE format(
        'CREATE TABLE IF NOT EXISTS %I PARTITION OF decision_log FOR VALUES FROM (%s) TO (%s)',
        'decision_log_' || to_char(DATE '1970-01-01' + day::INTEGER, 'YYYYMMDD'),
        day * micros_per_day,
        (day + 1) * micros_per_day);
END;
$$;

-- A SECURITY DEFINER function resolves names with a fixed search path: the schema it was
-- created in, then pg_temp last, so that no table another role creates (a temporary one
-- above all) is taken for decision_log.
DO $$
BEGIN
    EXECUTE format(
        'ALTER FUNCTION decision_log_create_partition(BIGINT) SET search_path = %I, pg_temp',
        current_schema());
END;
$$;

-- Functions are executable by everyone unless revoked; the server's role is granted it.
REVOKE ALL ON FUNCTION decision_log_create_partition(BIGINT) FROM PUBLIC;
