-- The consent log's store (consent.LogStore): its entries, numbered from
-- 0, each found by its leaf hash, and the sequence of its Merkle tree
-- hashes, numbered from 0 in the order appended. Rows are never changed
-- or deleted.

CREATE TABLE consent_entries (
    idx  BIGINT PRIMARY KEY,
    leaf {{bytes}} NOT NULL UNIQUE,
    data {{bytes}} NOT NULL
);

CREATE TABLE consent_hashes (
    idx  BIGINT PRIMARY KEY,
    hash {{bytes}} NOT NULL
);
