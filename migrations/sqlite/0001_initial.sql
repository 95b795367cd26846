-- The embedded store. Enum values are stored as their canonical names (POLICY.md), times as
-- microseconds since the Unix epoch (UTC), revisions as the sequence of the audit event that
-- produced them.

CREATE TABLE subjects (
    subject_id          TEXT    NOT NULL PRIMARY KEY,
    plan                TEXT    CHECK (plan IN ('FREE', 'PRO', 'STUDENT', 'TEAM', 'ENTERPRISE',
                                                'API_FREE', 'API_PAID')),
    jurisdiction        TEXT,
    status              TEXT    NOT NULL CHECK (status IN ('ACTIVE', 'RESTRICTED', 'DELETED')),
    gpc                 BOOLEAN NOT NULL,
    zero_data_retention BOOLEAN NOT NULL,
    created_at          INTEGER NOT NULL,
    updated_at          INTEGER NOT NULL,
    revision            INTEGER NOT NULL
);

CREATE TABLE choices (
    subject_id TEXT    NOT NULL REFERENCES subjects (subject_id),
    purpose    TEXT    NOT NULL,
    choice     TEXT    NOT NULL CHECK (choice IN ('GRANTED', 'REFUSED')),
    updated_at INTEGER NOT NULL,
    revision   INTEGER NOT NULL,
    PRIMARY KEY (subject_id, purpose)
);

CREATE TABLE conversation_facts (
    subject_id           TEXT    NOT NULL REFERENCES subjects (subject_id),
    conversation_id      TEXT    NOT NULL,
    feedback             TEXT    CHECK (feedback IN ('THUMBS_UP', 'THUMBS_DOWN')),
    automated_moderation BOOLEAN NOT NULL,
    user_report          BOOLEAN NOT NULL,
    updated_at           INTEGER NOT NULL,
    revision             INTEGER NOT NULL,
    PRIMARY KEY (subject_id, conversation_id)
);

-- One global hash chain. `sequence` is the revision the event produced: gap-free, and its
-- primary key forbids two events at one position, so the chain cannot fork.
CREATE TABLE audit_events (
    sequence       INTEGER NOT NULL PRIMARY KEY,
    event_id       TEXT    NOT NULL UNIQUE,
    at_micros      INTEGER NOT NULL,
    subject_id     TEXT    NOT NULL,
    kind           TEXT    NOT NULL,
    caller         TEXT    NOT NULL,
    operator_id    TEXT    NOT NULL,
    actor_reason   TEXT    NOT NULL,
    detail_json    TEXT    NOT NULL,
    policy_version TEXT    NOT NULL,
    trace_id       TEXT    NOT NULL,
    prev_hash      TEXT    NOT NULL,
    hash           TEXT    NOT NULL
);

CREATE INDEX audit_events_by_subject ON audit_events (subject_id, sequence);

-- The end of the chain, updated with every event: it catches events removed from the tail.
CREATE TABLE audit_chain_head (
    chain_id INTEGER NOT NULL PRIMARY KEY CHECK (chain_id = 0),
    sequence INTEGER NOT NULL,
    hash     TEXT    NOT NULL
);

INSERT INTO audit_chain_head (chain_id, sequence, hash)
VALUES (0, 0, '0000000000000000000000000000000000000000000000000000000000000000');

-- The audit log is append-only through the service's connection.
CREATE TRIGGER audit_events_append_only_update BEFORE UPDATE ON audit_events
BEGIN
    SELECT RAISE(ABORT, 'audit_events is append-only');
END;

CREATE TRIGGER audit_events_append_only_delete BEFORE DELETE ON audit_events
BEGIN
    SELECT RAISE(ABORT, 'audit_events is append-only');
END;
