-- The first schema: the registry, telemetry, incidents, device state,
-- commands and claims. {{bytes}} and {{serial}} are filled in by the
-- dialect. Times are int64 Unix nanoseconds; NULL stands for "none".

CREATE TABLE models (
    id   TEXT PRIMARY KEY,
    name TEXT NOT NULL
);

CREATE TABLE manifests (
    hash   {{bytes}} PRIMARY KEY,
    model  TEXT NOT NULL REFERENCES models (id),
    signed {{bytes}} NOT NULL,
    added  BIGINT NOT NULL
);
CREATE INDEX manifests_model ON manifests (model, added);

CREATE TABLE devices (
    id          {{bytes}} PRIMARY KEY,
    public_key  {{bytes}} NOT NULL,
    -- the certificate chain as a CBOR array of DER certificates
    chain       {{bytes}},
    model       TEXT NOT NULL REFERENCES models (id),
    -- '' while nobody owns the device
    owner       TEXT NOT NULL,
    standing    SMALLINT NOT NULL,
    reason      TEXT NOT NULL,
    standing_at BIGINT NOT NULL,
    created     BIGINT NOT NULL
);
CREATE INDEX devices_owner ON devices (owner, id);
CREATE INDEX devices_model ON devices (model, id);

CREATE TABLE app_keys (
    kid        {{bytes}} PRIMARY KEY,
    subject    TEXT NOT NULL,
    public_key {{bytes}} NOT NULL,
    added      BIGINT NOT NULL,
    removed    BIGINT
);
CREATE INDEX app_keys_subject ON app_keys (subject, added);

-- A batch is kept, with its digest and count, after retention deleted its
-- readings, so that a repeat is still known as one.
CREATE TABLE batches (
    id       {{serial}},
    device   {{bytes}} NOT NULL REFERENCES devices (id),
    stream   TEXT NOT NULL,
    manifest {{bytes}} NOT NULL REFERENCES manifests (hash),
    epoch    BIGINT NOT NULL,
    seq      BIGINT NOT NULL,
    digest   {{bytes}} NOT NULL,
    readings BIGINT NOT NULL,
    received BIGINT NOT NULL,
    UNIQUE (device, epoch, seq)
);
CREATE INDEX batches_manifest ON batches (manifest, stream);

-- device and stream repeat the batch's so that a device's readings of a
-- stream are found, and a stream's expired, through one index.
CREATE TABLE readings (
    id      {{serial}},
    batch   BIGINT NOT NULL REFERENCES batches (id),
    device  {{bytes}} NOT NULL,
    stream  TEXT NOT NULL,
    taken   BIGINT NOT NULL,
    fields  {{bytes}} NOT NULL,
    consent {{bytes}}
);
CREATE INDEX readings_device ON readings (device, stream, taken, id);
CREATE INDEX readings_stream ON readings (stream, taken);
CREATE INDEX readings_batch ON readings (batch);

-- The highest sequence number seen per device and epoch, and the runs
-- below it not seen.
CREATE TABLE sequences (
    device {{bytes}} NOT NULL,
    epoch  BIGINT NOT NULL,
    high   BIGINT NOT NULL,
    PRIMARY KEY (device, epoch)
);

CREATE TABLE gaps (
    device    {{bytes}} NOT NULL,
    epoch     BIGINT NOT NULL,
    first_seq BIGINT NOT NULL,
    last_seq  BIGINT NOT NULL,
    found     BIGINT NOT NULL,
    PRIMARY KEY (device, epoch, first_seq)
);

CREATE TABLE incidents (
    id       {{serial}},
    device   {{bytes}} NOT NULL,
    occurred BIGINT NOT NULL,
    kind     TEXT NOT NULL,
    detail   TEXT NOT NULL
);
CREATE INDEX incidents_device ON incidents (device, occurred, id);

CREATE TABLE states (
    device           {{bytes}} PRIMARY KEY REFERENCES devices (id),
    desired          {{bytes}},
    desired_version  BIGINT NOT NULL,
    reported         {{bytes}},
    reported_version BIGINT NOT NULL,
    seen             BIGINT NOT NULL
);

CREATE TABLE commands (
    device    {{bytes}} NOT NULL REFERENCES devices (id),
    id        {{bytes}} NOT NULL,
    name      TEXT NOT NULL,
    args      {{bytes}},
    created   BIGINT NOT NULL,
    expires   BIGINT,
    state     SMALLINT NOT NULL,
    delivered BIGINT,
    finished  BIGINT,
    result    {{bytes}},
    PRIMARY KEY (device, id)
);
CREATE INDEX commands_device ON commands (device, state, created);
CREATE INDEX commands_expires ON commands (expires, state);

CREATE TABLE claims (
    device  {{bytes}} PRIMARY KEY REFERENCES devices (id),
    hash    {{bytes}} NOT NULL,
    created BIGINT NOT NULL
);

-- scope 1 counts attempts on a device (who is its ID), scope 2 a
-- claimant's (who is the subject, UTF-8).
CREATE TABLE claim_attempts (
    scope        SMALLINT NOT NULL,
    who          {{bytes}} NOT NULL,
    window_start BIGINT NOT NULL,
    attempts     BIGINT NOT NULL,
    PRIMARY KEY (scope, who)
);
