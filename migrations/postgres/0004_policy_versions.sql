-- Policy versions applied at run time (the built-in version is in the binary). Each is kept
-- for good: a check as of a past instant is decided under the version then in force.
CREATE TABLE policy_versions (
    version               TEXT PRIMARY KEY,
    effective_from_micros BIGINT NOT NULL,
    description           TEXT NOT NULL,
    -- The policy file as applied.
    source                TEXT NOT NULL,
    applied_at_micros     BIGINT NOT NULL,
    -- The revision of the policy_applied audit event recording it.
    revision              BIGINT NOT NULL
);
