-- The store of record on PostgreSQL: the same tables, columns and meanings as
-- migrations/sqlite/0001_initial.sql, so both backends behave alike. Enum values are stored by
-- their canonical names, times as microseconds since the Unix epoch (UTC), revisions as the
-- sequence of the audit event that produced them.
--
-- subject_id leads the primary key of every per-subject table: it is the distribution column if
-- the subject tables are ever sharded (Citus), with no rewrite.

CREATE TABLE subjects (
    subject_id          TEXT    NOT NULL PRIMARY KEY,
    plan                TEXT    CHECK (plan IN ('FREE', 'PRO', 'STUDENT', 'TEAM', 'ENTERPRISE',
                                                'API_FREE', 'API_PAID')),
    jurisdiction        TEXT,
    status              TEXT    NOT NULL CHECK (status IN ('ACTIVE', 'RESTRICTED', 'DELETED')),
    gpc                 BOOLEAN NOT NULL,
    zero_data_retention BOOLEAN NOT NULL,
    created_at          BIGINT  NOT NULL,
    updated_at          BIGINT  NOT NULL,
    revision            BIGINT  NOT NULL
);

CREATE TABLE choices (
    subject_id TEXT   NOT NULL REFERENCES subjects (subject_id),
    purpose    TEXT   NOT NULL,
    choice     TEXT   NOT NULL CHECK (choice IN ('GRANTED', 'REFUSED')),
    updated_at BIGINT NOT NULL,
    revision   BIGINT NOT NULL,
    PRIMARY KEY (subject_id, purpose)
);

CREATE TABLE conversation_facts (
    subject_id           TEXT    NOT NULL REFERENCES subjects (subject_id),
    conversation_id      TEXT    NOT NULL,
    feedback             TEXT    CHECK (feedback IN ('THUMBS_UP', 'THUMBS_DOWN')),
    automated_moderation BOOLEAN NOT NULL,
    user_report          BOOLEAN NOT NULL,
    updated_at           BIGINT  NOT NULL,
    revision             BIGINT  NOT NULL,
    PRIMARY KEY (subject_id, conversation_id)
);

-- One global hash chain. `sequence` is the revision the event produced: gap-free, and its
-- primary key forbids two events at one position, so the chain cannot fork.
CREATE TABLE audit_events (
    sequence       BIGINT NOT NULL PRIMARY KEY,
    event_id       TEXT   NOT NULL UNIQUE,
    at_micros      BIGINT NOT NULL,
    subject_id     TEXT   NOT NULL,
    kind           TEXT   NOT NULL,
    caller         TEXT   NOT NULL,
    operator_id    TEXT   NOT NULL,
    actor_reason   TEXT   NOT NULL,
    detail_json    TEXT   NOT NULL,
    policy_version TEXT   NOT NULL,
    trace_id       TEXT   NOT NULL,
    prev_hash      TEXT   NOT NULL,
    hash           TEXT   NOT NULL
);

CREATE INDEX audit_events_by_subject ON audit_events (subject_id, sequence);

-- The end of the chain. Every write locks this row first (SELECT ... FOR UPDATE), which orders
-- all writers, in every server process, into one line.
CREATE TABLE audit_chain_head (
    chain_id INTEGER NOT NULL PRIMARY KEY CHECK (chain_id = 0),
    sequence BIGINT  NOT NULL,
    hash     TEXT    NOT NULL
);

INSERT INTO audit_chain_head (chain_id, sequence, hash)
VALUES (0, 0, '0000000000000000000000000000000000000000000000000000000000000000');

-- The audit log is append-only through SQL.
CREATE FUNCTION audit_events_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_events is append-only';
END;
$$;

CREATE TRIGGER audit_events_append_only BEFORE UPDATE OR DELETE ON audit_events
    FOR EACH ROW EXECUTE FUNCTION audit_events_append_only();

CREATE TRIGGER audit_events_append_only_truncate BEFORE TRUNCATE ON audit_events
    FOR EACH STATEMENT EXECUTE FUNCTION audit_events_append_only();
