-- The decisions shipped from the decision log's segment files are kept as those segments, as on
-- SQLite: one row for each (about a second of decisions), its body the segment's checksummed
-- blocks of compact records as written (src/audit/segment.rs). A row of decision_log per
-- decision, COPYed and indexed by subject, cost PostgreSQL about 5 µs of CPU per logged decision
-- (docs/benchmarks.md), and the server as much again to turn records into rows: more than a
-- tenth of a Check's. `require_audit` decisions, and those recorded before this migration, stay
-- rows of decision_log; the server reads both (Audit.ListDecisions).
--
-- subjects lists the distinct subjects of the segment's decisions, so that a subject's listing
-- reads only the segments that hold one of its decisions (the GIN index), not every segment of
-- its time range. first_decision_id makes shipping a segment idempotent (a crash between the
-- insert and the deletion of the file ships it again); first_at and last_at bound its
-- decisions' instants. The body is stored out of line and uncompressed: its records are compact
-- already, and compressing them would spend PostgreSQL's CPU on every segment.
CREATE TABLE decision_log_segments (
    first_decision_id TEXT   NOT NULL PRIMARY KEY,
    first_at          BIGINT NOT NULL,
    last_at           BIGINT NOT NULL,
    records           BIGINT NOT NULL,
    subjects          TEXT[] NOT NULL,
    body              BYTEA  NOT NULL
);

ALTER TABLE decision_log_segments ALTER COLUMN body SET STORAGE EXTERNAL;

CREATE INDEX decision_log_segments_by_time ON decision_log_segments (first_at);
CREATE INDEX decision_log_segments_by_end ON decision_log_segments (last_at);
CREATE INDEX decision_log_segments_by_subject ON decision_log_segments USING gin (subjects);
