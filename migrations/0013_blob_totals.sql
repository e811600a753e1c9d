-- Totals of the stored blobs per collection, kept by a trigger on syncline_blobs, so that the
-- syncline_blobs_stored / syncline_blob_bytes_stored gauges read one row per collection and
-- never scan the blobs.
CREATE TABLE syncline_blob_totals (
    collection text   PRIMARY KEY,
    blobs      bigint NOT NULL,
    bytes      bigint NOT NULL
);
INSERT INTO syncline_blob_totals (collection, blobs, bytes)
SELECT collection, count(*), coalesce(sum(length), 0) FROM syncline_blobs GROUP BY collection;

CREATE FUNCTION syncline_blob_totals_track() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO syncline_blob_totals AS t (collection, blobs, bytes)
        VALUES (NEW.collection, 1, NEW.length)
        ON CONFLICT (collection)
        DO UPDATE SET blobs = t.blobs + 1, bytes = t.bytes + EXCLUDED.bytes;
    ELSE
        UPDATE syncline_blob_totals SET blobs = blobs - 1, bytes = bytes - OLD.length
        WHERE collection = OLD.collection;
    END IF;
    RETURN NULL;
END $$;

-- Deferred to commit, so a collection's totals row is locked only while a transaction commits,
-- not while an upload's transaction copies its object (S3) or a GC batch deletes its bytes.
-- An upsert that finds the blob stored updates it and counts nothing.
CREATE CONSTRAINT TRIGGER syncline_blob_totals_track
    AFTER INSERT OR DELETE ON syncline_blobs
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION syncline_blob_totals_track();
