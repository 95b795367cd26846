-- The audit log as an RFC 6962 Merkle tree whose leaves outlive erased payloads
-- (docs/audit.md "Payloads and erasure", "The Merkle tree").
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
    sequence    INTEGER NOT NULL PRIMARY KEY,
    -- 16 random bytes as hex, hashed before the detail; '' for events written before.
    salt        TEXT    NOT NULL,
    detail_json TEXT    NOT NULL
);

INSERT INTO audit_payloads (sequence, salt, detail_json)
SELECT sequence, '', detail_json FROM audit_events;

-- A payload is written once and erased whole (DELETE), never changed.
CREATE TRIGGER audit_payloads_no_update BEFORE UPDATE ON audit_payloads
BEGIN
    SELECT RAISE(ABORT, 'audit_payloads is append-only: a payload is erased, never changed');
END;

DROP TRIGGER audit_events_append_only_update;

ALTER TABLE audit_events DROP COLUMN detail_json;
ALTER TABLE audit_events ADD COLUMN payload_sha256 TEXT;
ALTER TABLE audit_events ADD COLUMN tree BLOB;

CREATE TRIGGER audit_events_append_only_update BEFORE UPDATE ON audit_events
WHEN NOT (
    OLD.payload_sha256 IS NULL AND OLD.tree IS NULL
    AND NEW.payload_sha256 IS NOT NULL AND NEW.tree IS NOT NULL
    AND NEW.sequence = OLD.sequence AND NEW.event_id = OLD.event_id
    AND NEW.at_micros = OLD.at_micros AND NEW.subject_id = OLD.subject_id
    AND NEW.kind = OLD.kind AND NEW.caller = OLD.caller
    AND NEW.operator_id = OLD.operator_id AND NEW.actor_reason = OLD.actor_reason
    AND NEW.policy_version = OLD.policy_version AND NEW.trace_id = OLD.trace_id
    AND NEW.prev_hash = OLD.prev_hash AND NEW.hash = OLD.hash
)
BEGIN
    SELECT RAISE(ABORT, 'audit_events is append-only');
END;

-- The peaks of the tree of `sequence` leaves; NULL until the tree of earlier events is built.
ALTER TABLE audit_chain_head ADD COLUMN frontier BLOB;
UPDATE audit_chain_head SET frontier = X'' WHERE sequence = 0;
