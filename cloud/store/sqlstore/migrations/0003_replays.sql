-- The device tokens verifiers accepted (identity.ReplayCache): each
-- device's token IDs (the jti, as bytes), kept until expires, after
-- which they may be deleted.

CREATE TABLE replays (
    device  {{bytes}} NOT NULL,
    jti     {{bytes}} NOT NULL,
    expires BIGINT NOT NULL,
    PRIMARY KEY (device, jti)
);
CREATE INDEX replays_expires ON replays (expires);
