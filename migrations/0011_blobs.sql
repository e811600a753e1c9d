-- Attachments (docs/architecture.md, "Attachments"): content-addressed blobs per collection.
-- A blob is named by its digest, the lowercase hex SHA-256 of its bytes (what RxDB's default
-- hashFunction computes), and stored once per collection however many documents reference it.
-- This table is the truth of which blobs exist, for both storage back ends; `location` says
-- where the bytes are (an upload id in syncline_blob_chunks, or an object key).
CREATE TABLE syncline_blobs (
    collection   text        NOT NULL,
    digest       text        NOT NULL,
    length       bigint      NOT NULL,
    content_type text        NOT NULL,
    location     text        NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    -- Refreshed by uploads and by the push check that found it: the GC spares a blob touched
    -- within the grace period, so a push that was told "held" has the grace period to commit.
    touched_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (collection, digest)
);
CREATE INDEX syncline_blobs_touched ON syncline_blobs (touched_at);

-- Who proved they hold a blob's bytes by uploading them (verified): the only callers an Upload
-- of a stored digest answers at once, and (with readers of a referencing document) the only
-- ones whose pushes may reference it. Knowing a digest is never enough to get the bytes.
CREATE TABLE syncline_blob_grants (
    collection text NOT NULL,
    digest     text NOT NULL,
    owner      text NOT NULL,
    PRIMARY KEY (collection, digest, owner),
    FOREIGN KEY (collection, digest) REFERENCES syncline_blobs ON DELETE CASCADE
);

-- The PostgreSQL back end's bytes: chunks of one upload, in order of their first byte. Rows
-- are written while the upload streams in (no long transaction); they become a blob only when
-- a verified upload's syncline_blobs row names their upload id.
CREATE TABLE syncline_blob_chunks (
    upload_id text   NOT NULL,
    start     bigint NOT NULL,
    data      bytea  NOT NULL,
    PRIMARY KEY (upload_id, start)
);
-- Blob bytes are mostly compressed media already: do not try to compress them again.
ALTER TABLE syncline_blob_chunks ALTER COLUMN data SET STORAGE EXTERNAL;

-- Uploads in progress: removed when they commit or fail; what a crash leaves behind is
-- deleted by the GC once older than the grace period (chunks, or a temporary object).
CREATE TABLE syncline_blob_uploads (
    upload_id  text        PRIMARY KEY,
    location   text        NOT NULL,
    started_at timestamptz NOT NULL DEFAULT now()
);

-- Which live documents reference a digest: "may this principal read a document referencing
-- X" (downloads) and "is X referenced at all" (GC) are index lookups. Tombstones reference
-- nothing. Queries must repeat this exact expression for the planner to use the index.
CREATE INDEX syncline_documents_attachments ON syncline_documents
    USING gin (jsonb_path_query_array(body, '$._attachments.*.digest') jsonb_path_ops)
    WHERE NOT deleted;
