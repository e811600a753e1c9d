-- The purge horizon of each collection: the highest position a retention purge removed.
-- Every removed tombstone has a position at or below it, so a checkpoint above it has already
-- seen every removed row (or a later state of its id) and the table still serves it exactly;
-- a checkpoint at or below it may have missed a removed tombstone and is refused
-- (FAILED_PRECONDITION, CHECKPOINT_EXPIRED). The purge raises the row in the same transaction
-- as its DELETE, and readers read it in the same statement as their page, so no reader sees
-- the rows gone without the horizon raised. See docs/architecture.md, "Retention".
CREATE TABLE syncline_purge_horizon (
    collection text        PRIMARY KEY,
    change_xid bigint      NOT NULL,
    change_seq bigint      NOT NULL,
    -- updated_at of the tombstone at the horizon: how far back a checkpoint may still reach.
    horizon_updated_at timestamptz NOT NULL,
    -- When a purge last raised the horizon.
    raised_at  timestamptz NOT NULL
);

-- The purge scans tombstones in position order, oldest first, and stops at its batch size:
-- indexed apart from live documents, so that a batch never walks the live documents that sit
-- between old tombstones (most of a collection, once its old tombstones are gone).
CREATE INDEX syncline_documents_tombstones
    ON syncline_documents (collection, change_xid, change_seq) WHERE deleted;
