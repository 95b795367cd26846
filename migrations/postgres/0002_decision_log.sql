-- Every decision the service gives can be recorded here (see the decision_log setting).
-- Range-partitioned by day on decided_at (microseconds since the epoch, UTC): one partition per
-- day, named decision_log_YYYYMMDD, created ahead by the service; retention drops whole
-- partitions (assent audit prune), never rows.
CREATE TABLE decision_log (
    decided_at      BIGINT  NOT NULL,
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
    revision        BIGINT,
    degraded        BOOLEAN NOT NULL,
    caller          TEXT    NOT NULL,
    trace_id        TEXT    NOT NULL
) PARTITION BY RANGE (decided_at);

CREATE INDEX decision_log_by_subject ON decision_log (subject_id, decided_at);
CREATE INDEX decision_log_by_decision_id ON decision_log (decision_id);
