-- The consent records the cloud accepted, as their signers signed them,
-- from which every node builds each subject's consent history. seq keeps
-- the order they were added in, so that a record comes after the one it
-- ends. retention is in nanoseconds, 0 for none.
CREATE TABLE consent_records (
    seq       {{serial}},
    id        {{bytes}} NOT NULL UNIQUE,
    subject   TEXT NOT NULL,
    signed    {{bytes}} NOT NULL,
    occurred  BIGINT NOT NULL,
    retention BIGINT NOT NULL
);
CREATE INDEX consent_records_subject ON consent_records (subject, seq);

-- The readings stored under each consent record, for its retention.
CREATE INDEX readings_consent ON readings (consent, taken);
