-- Documents that weigh more than 4,096 bytes in a page (StoredDocument::page_bytes: the body as
-- text, id, owner and revision, plus 64), indexed apart in change order. A page of `limit`
-- documents that holds none of them weighs at most `limit` x 4,096 bytes, within the byte
-- budget whenever that product is: one probe of these (usually empty) indexes tells the page
-- query that it may read its rows without the running sum of their weights, which cost
-- PostgreSQL about a third of the page's time. See src/store/postgres/read.rs.
--
-- Every write already changes the indexed change position, so these indexes cost no HOT
-- update that was possible before; they hold only the large documents.
CREATE INDEX syncline_documents_large
    ON syncline_documents (collection, change_xid, change_seq)
    WHERE body_bytes + octet_length(id) + octet_length(owner) + octet_length(revision) > 4032;
CREATE INDEX syncline_documents_owner_large
    ON syncline_documents (collection, owner, change_xid, change_seq)
    WHERE body_bytes + octet_length(id) + octet_length(owner) + octet_length(revision) > 4032;
