-- What Retention.Due reads, each in subject order from where the last page stopped: deleted
-- subjects with their deletion instant (a deleted subject takes no further write, so its
-- updated_at is when it was deleted), subjects with zero data retention, and refused choices
-- (a withdrawn consent) with when they were made.
CREATE INDEX subjects_deleted ON subjects (subject_id, updated_at) WHERE status = 'DELETED';
CREATE INDEX subjects_zero_data_retention ON subjects (subject_id) WHERE zero_data_retention;
CREATE INDEX choices_refused ON choices (purpose, subject_id, updated_at) WHERE choice = 'REFUSED';
