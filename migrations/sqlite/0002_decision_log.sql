-- Every decision the service gives can be recorded here (see the decision_log setting). SQLite
-- has no partitions: retention deletes by time range in one statement.
CREATE TABLE decision_log (
    decided_at      INTEGER NOT NULL,
    decision_id     TEXT    NOT NULL,
    subject_id      TEXT    NOT NULL,
    purpose         TEXT    NOT NULL,
    conversation_id TEXT,
    source          TEXT    NOT NULL,
    consistency     TEXT    NOT NULL,
    decision        TEXT    NOT NULL,
    reason          TEXT    NOT NULL,
    rule            TEXT    NOT NULL,
    policy_version  TEXT    NOT NULL,
    revision        INTEGER,
    degraded        BOOLEAN NOT NULL,
    caller          TEXT    NOT NULL,
    trace_id        TEXT    NOT NULL
);

CREATE INDEX decision_log_by_time ON decision_log (decided_at);
CREATE INDEX decision_log_by_subject ON decision_log (subject_id, decided_at);
CREATE INDEX decision_log_by_decision_id ON decision_log (decision_id);
