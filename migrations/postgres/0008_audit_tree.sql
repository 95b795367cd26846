-- The audit log as an RFC 6962 Merkle tree whose leaves outlive erased payloads
-- (docs/audit.md "Payloads and erasure", "The Merkle tree"). The same as
-- migrations/sqlite/0008_audit_tree.sql.
--
-- An event's payload (its detail) moves to its own table, so that it can be erased while the
-- event stays: the event keeps `payload_sha256`, the commitment its leaf is computed from.
-- `tree` holds the hashes of the perfect subtrees the event completes (its leaf first), and the
-- head the peaks of the whole tree, so that a proof is a few point reads.
--
-- Events written before keep their hashes; `payload_sha256` and `tree` are filled once for them
-- in sequence order by `assent migrate` (or a server that migrates), which the trigger allows and
-- nothing else.

CREATE TABLE audit_payloads (
    sequence    BIGINT NOT NULL PRIMARY KEY,
    -- 16 random bytes as hex, hashed before the detail; '' for events written before.
    salt        TEXT   NOT NULL,
    detail_json TEXT   NOT NULL
);

INSERT INTO audit_payloads (sequence, salt, detail_json)
SELECT sequence, '', detail_json FROM audit_events;

-- A payload is written once and erased whole (DELETE), never changed.
CREATE FUNCTION audit_payloads_no_update() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_payloads is append-only: a payload is erased, never changed';
END;
$$;

CREATE TRIGGER audit_payloads_no_update BEFORE UPDATE ON audit_payloads
    FOR EACH ROW EXECUTE FUNCTION audit_payloads_no_update();

ALTER TABLE audit_events DROP COLUMN detail_json;
ALTER TABLE audit_events ADD COLUMN payload_sha256 TEXT;
ALTER TABLE audit_events ADD COLUMN tree BYTEA;

CREATE OR REPLACE FUNCTION audit_events_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE' THEN
        IF OLD.payload_sha256 IS NULL AND OLD.tree IS NULL
           AND NEW.payload_sha256 IS NOT NULL AND NEW.tree IS NOT NULL
           AND (NEW.sequence, NEW.event_id, NEW.at_micros, NEW.subject_id, NEW.kind, NEW.caller,
                NEW.operator_id, NEW.actor_reason, NEW.policy_version, NEW.trace_id,
                NEW.prev_hash, NEW.hash)
             = (OLD.sequence, OLD.event_id, OLD.at_micros, OLD.subject_id, OLD.kind, OLD.caller,
                OLD.operator_id, OLD.actor_reason, OLD.policy_version, OLD.trace_id,
                OLD.prev_hash, OLD.hash) THEN
            RETURN NEW;
        END IF;
    END IF;
    RAISE EXCEPTION 'audit_events is append-only';
END;
$$;

-- The peaks of the tree of `sequence` leaves; NULL until the tree of earlier events is built.
ALTER TABLE audit_chain_head ADD COLUMN frontier BYTEA;
UPDATE audit_chain_head SET frontier = '\x'::BYTEA WHERE sequence = 0;
