-- Every decision is a row of decision_log, and each row's index entries cost PostgreSQL more CPU
-- than the row itself (a B-tree insert is about 2 µs; a decision is COPYed in about 2 µs). The
-- index by decision id is replaced by a BRIN index on decided_at, a few bytes per block range
-- and nearly free to keep, since rows arrive in time order. A decision id is a UUIDv7 whose
-- timestamp is the instant of its decision, to the millisecond, so a lookup by id reads the rows
-- of that instant (the server narrows it to a window of two seconds around it, through this
-- index) and needs no index of its own. The index by subject stays: a subject's decisions are
-- what an auditor asks for most.
DROP INDEX decision_log_by_decision_id;
CREATE INDEX decision_log_by_time ON decision_log USING brin (decided_at);
