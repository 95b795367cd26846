-- On SQLite, the decisions shipped from the decision log's segment files are kept as those
-- segments: one row for each (about a second of decisions), its body the segment's checksummed
-- blocks of compact records as written (src/audit/segment.rs). Inserting one blob costs a
-- fraction of inserting and indexing each decision as a row of decision_log, which the embedded
-- store, serving from the same process, cannot afford at every decision. `require_audit`
-- decisions, and those recorded before this migration, stay rows of decision_log; the server
-- reads both (Audit.ListDecisions).
--
-- first_decision_id makes shipping a segment idempotent (a crash between the insert and the
-- deletion of the file ships it again); first_at and last_at bound its decisions' instants.
CREATE TABLE decision_log_segments (
    first_decision_id TEXT    NOT NULL PRIMARY KEY,
    first_at          INTEGER NOT NULL,
    last_at           INTEGER NOT NULL,
    records           INTEGER NOT NULL,
    body              BLOB    NOT NULL
);

CREATE INDEX decision_log_segments_by_time ON decision_log_segments (first_at);
CREATE INDEX decision_log_segments_by_end ON decision_log_segments (last_at);
