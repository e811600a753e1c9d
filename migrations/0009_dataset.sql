-- Which PostgreSQL cluster's transaction ids the positions in syncline_documents come from,
-- and the dataset generation checkpoint tokens are sealed with. A logical dump carries this
-- row to another cluster (pg_dump | psql, logical replication), whose transaction ids are
-- unrelated: Syncline then sees a system_identifier that is not the current cluster's (or rows
-- above the current transaction counter), re-stamps every row's position with new
-- transaction ids, bumps the generation (old tokens become CHECKPOINT_EXPIRED) and records the
-- new identity. Physical replicas and backups keep the identifier: nothing happens there.
-- See docs/architecture.md, "Restore into another cluster".
CREATE TABLE syncline_dataset (
    id                smallint    PRIMARY KEY CHECK (id = 1),
    system_identifier bigint      NOT NULL,
    generation        integer     NOT NULL CHECK (generation >= 0),
    -- When the positions were last re-stamped (NULL: never).
    restamped_at      timestamptz
);
INSERT INTO syncline_dataset (id, system_identifier, generation)
SELECT 1, system_identifier, 0 FROM pg_control_system();

-- The rows still to re-stamp, in their old change order: filled in one transaction when a
-- re-stamp starts, emptied batch by batch in the transactions that re-stamp them, so a re-stamp
-- interrupted by a crash resumes where it stopped. Empty otherwise.
CREATE TABLE syncline_restamp (
    collection text   NOT NULL,
    old_xid    bigint NOT NULL,
    old_seq    bigint NOT NULL,
    id         text   NOT NULL,
    PRIMARY KEY (collection, old_xid, old_seq, id)
);
