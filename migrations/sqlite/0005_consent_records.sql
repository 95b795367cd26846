-- Consent records: how and under what each stored choice was given, and when it expires.
-- Choices stored before this migration keep an empty notice version and method UNSPECIFIED
-- (they were not recorded); their caller is taken from the audit event that stored them.

ALTER TABLE choices ADD COLUMN notice_version TEXT NOT NULL DEFAULT '';
ALTER TABLE choices ADD COLUMN method TEXT NOT NULL DEFAULT 'UNSPECIFIED'
    CHECK (method IN ('UNSPECIFIED', 'SETTINGS_PAGE', 'COOKIE_BANNER', 'GPC_SIGNAL',
                      'RIGHTS_REQUEST', 'API_IMPORT'));
-- The calling service that wrote the choice.
ALTER TABLE choices ADD COLUMN caller TEXT NOT NULL DEFAULT '';
-- Microseconds since the epoch from which the choice no longer counts; NULL: never.
ALTER TABLE choices ADD COLUMN expires_at INTEGER;

UPDATE choices SET caller = COALESCE(
    (SELECT e.caller FROM audit_events AS e WHERE e.sequence = choices.revision), '');

-- What the expiry sweep reads: only the choices that expire.
CREATE INDEX choices_by_expiry ON choices (expires_at) WHERE expires_at IS NOT NULL;
