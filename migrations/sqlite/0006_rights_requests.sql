-- Rights requests (privacy policy §8 and §9): one row per request, its current state; every step
-- is also an audit event of the subject. Records are kept six years after the answer
-- (kept_until), and survive the subject's deletion.
CREATE TABLE rights_requests (
    request_id          TEXT PRIMARY KEY,
    subject_id          TEXT NOT NULL,
    kind                TEXT NOT NULL,
    -- The jurisdiction the deadlines were computed in, and its regime (GDPR, US_STATE).
    jurisdiction        TEXT NOT NULL,
    regime              TEXT NOT NULL,
    state               TEXT NOT NULL,
    received_at         BIGINT NOT NULL,
    identity_verified   BOOLEAN NOT NULL,
    -- Purpose names, comma-separated (objection, consent withdrawal).
    purposes            TEXT NOT NULL,
    -- The last instant the current answer is due.
    due_at              BIGINT NOT NULL,
    extended            BOOLEAN NOT NULL,
    extension_reason    TEXT NOT NULL,
    appealed            BOOLEAN NOT NULL,
    effect_applied      BOOLEAN NOT NULL,
    refusal_reason      TEXT NOT NULL,
    answered_at         BIGINT,
    kept_until          BIGINT,
    created_at          BIGINT NOT NULL,
    updated_at          BIGINT NOT NULL,
    -- The revision of the request's latest audit event.
    revision            BIGINT NOT NULL
);

CREATE INDEX rights_requests_by_subject ON rights_requests (subject_id, received_at);

-- The requests still owed an answer, by deadline: what the overdue listing reads.
CREATE INDEX rights_requests_open_by_due ON rights_requests (due_at, request_id)
    WHERE state NOT IN ('COMPLETED', 'REFUSED');
