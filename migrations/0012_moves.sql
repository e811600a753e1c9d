-- Selective sync's removal records. A filtered reader must learn when a document it may hold
-- stops matching its selector (an edit moved it out, or it was deleted), however the write was
-- made: so a trigger, not the push, records them. See docs/architecture.md, "Selective sync".

-- The declared filterable fields of each collection (`filter_fields`), written by the server
-- at start-up from its configuration, so that the trigger needs no configuration of its own.
CREATE TABLE syncline_filter_paths (
    collection text   NOT NULL,
    -- The dotted path, the key of a projection (`meta.region`).
    path       text   NOT NULL,
    -- Its segments, for `#>` (`{meta,region}`).
    segments   text[] NOT NULL,
    PRIMARY KEY (collection, path)
);

-- One row per write that changed a live document's declared fields or deleted it: the
-- projection of its PREVIOUS state (dotted path -> value, absent fields left out, as
-- `FilterFields::projection_sql` computes it), at the position of the write. A reader past
-- that position whose selector matched the previous values may hold the document; if its
-- current state no longer matches, the reader gets a removal.
CREATE TABLE syncline_moves (
    collection text   NOT NULL,
    id         text   NOT NULL,
    owner      text   NOT NULL,
    change_xid bigint NOT NULL,
    change_seq bigint NOT NULL,
    previous   jsonb  NOT NULL
);

CREATE INDEX syncline_moves_changes ON syncline_moves (collection, change_xid, change_seq);

-- Once per statement, over the statement's old and new rows (transition tables): a push's
-- batch is one statement, so it pays one call and one join, and nothing when the collection
-- declares no fields. An update of a tombstone (a re-create) records nothing: no reader could
-- hold the deleted state.
CREATE FUNCTION syncline_record_moves() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NOT EXISTS (SELECT FROM syncline_filter_paths) THEN
        RETURN NULL;
    END IF;
    INSERT INTO syncline_moves (collection, id, owner, change_xid, change_seq, previous)
    SELECT n.collection, n.id, o.owner, n.change_xid, n.change_seq, pr.previous
    FROM syncline_moves_new n
    JOIN syncline_moves_old o ON o.collection = n.collection AND o.id = n.id
    CROSS JOIN LATERAL (
        SELECT coalesce(jsonb_object_agg(f.path, o.body #> f.segments)
                            FILTER (WHERE o.body #> f.segments IS NOT NULL), '{}') AS previous,
               coalesce(jsonb_object_agg(f.path, n.body #> f.segments)
                            FILTER (WHERE n.body #> f.segments IS NOT NULL), '{}') AS current,
               count(*) AS fields
        FROM syncline_filter_paths f
        WHERE f.collection = n.collection
    ) pr
    WHERE NOT o.deleted AND pr.fields > 0
      AND (n.deleted OR pr.previous IS DISTINCT FROM pr.current);
    RETURN NULL;
END
$$;

CREATE TRIGGER syncline_record_moves
    AFTER UPDATE ON syncline_documents
    REFERENCING OLD TABLE AS syncline_moves_old NEW TABLE AS syncline_moves_new
    FOR EACH STATEMENT
    EXECUTE FUNCTION syncline_record_moves();
