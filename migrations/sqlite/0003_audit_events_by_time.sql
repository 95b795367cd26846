-- Changes by time: what a replica re-announces to Redis after losing it, and what auditors
-- ask for ("what changed between these dates").
CREATE INDEX audit_events_by_time ON audit_events (at_micros);
