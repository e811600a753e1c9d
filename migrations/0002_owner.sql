-- Every document has an owner: the principal (JWT `sub`) that created it, or the owner a
-- service principal chose. Ordinary principals read only their own documents; this index
-- serves their pulls so that one owner's cost does not depend on what others hold.
ALTER TABLE syncline_documents ADD COLUMN owner text NOT NULL DEFAULT '';

CREATE INDEX syncline_documents_owner_changes
    ON syncline_documents (collection, owner, change_xid, change_seq);
