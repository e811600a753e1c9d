-- The size of each body as the server sends it (jsonb's text form), kept with the row so that a
-- page can be cut at its byte budget from a running sum in SQL without turning the bodies it
-- leaves out into text. Computing the text once per write costs about what parsing it did;
-- computing it at every read of a page of large documents cost seconds.
--
-- Adding a stored generated column rewrites the table once (under an exclusive lock).
ALTER TABLE syncline_documents
    ADD COLUMN body_bytes integer GENERATED ALWAYS AS (octet_length(body::text)) STORED;
