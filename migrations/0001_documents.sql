-- Documents of every collection, each row at its latest state (tombstones included).
--
-- change_xid / change_seq is the document's position in its collection's change order:
-- change_xid is the id of the transaction that last wrote it (pg_current_xact_id(), as bigint),
-- change_seq breaks ties inside one transaction. Readers only return rows whose change_xid is
-- older than every transaction still running (pg_snapshot_xmin of their snapshot), so a
-- position, once handed to a client, can never be filled in later by a slower transaction.
CREATE SEQUENCE syncline_change_seq CACHE 64;

CREATE TABLE syncline_documents (
    collection text        NOT NULL,
    id         text        NOT NULL,
    body       jsonb       NOT NULL,
    deleted    boolean     NOT NULL,
    revision   text        NOT NULL,
    updated_at timestamptz NOT NULL,
    change_xid bigint      NOT NULL,
    change_seq bigint      NOT NULL,
    PRIMARY KEY (collection, id)
);

-- Serves Pull and Subscribe: a range scan from a checkpoint in change order.
CREATE INDEX syncline_documents_changes
    ON syncline_documents (collection, change_xid, change_seq);
