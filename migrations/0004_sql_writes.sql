-- Every committed write replicates, however it was written. A push stamps its rows itself
-- (position, revision, updated_at) and notifies once; it marks its transaction with
-- `syncline.writer = push`, and these triggers then do nothing (their WHEN clause is all a push
-- pays). Any other INSERT or UPDATE (an operator's psql, another service) gets a position in
-- the change order, a revision and updated_at here, and a NOTIFY in the push's format
-- (`<xid>:<collection>`) so live streams wake; a DELETE becomes a tombstone, which replicates.
-- A writer that stamps a row itself (change_xid = its own transaction id and a new revision)
-- keeps its revision and position and is still notified for. See README "Writing from SQL".

-- The revision of a document's next state, `<generation>-<hash>` as the server makes them: the
-- generation grows by one per write (from 0 when the previous revision has none), so a revision
-- never repeats for one id; the hash (md5 here, xxh3 in the server) tells states apart.
CREATE FUNCTION syncline_next_revision(previous text, body jsonb, deleted boolean)
RETURNS text LANGUAGE sql IMMUTABLE AS $$
    SELECT (CASE WHEN split_part(previous, '-', 1) ~ '^[0-9]{1,18}$'
                 THEN split_part(previous, '-', 1)::bigint ELSE 0 END + 1)::text
           || '-' || left(md5(body::text || CASE WHEN deleted THEN ':deleted' ELSE '' END), 16)
$$;

CREATE FUNCTION syncline_stamp() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    tx bigint := pg_current_xact_id()::text::bigint;
BEGIN
    IF TG_OP = 'UPDATE' AND (NEW.collection, NEW.id) IS DISTINCT FROM (OLD.collection, OLD.id) THEN
        -- The old key would vanish without a tombstone: its readers would never learn.
        RAISE EXCEPTION USING ERRCODE = 'SY002',
            MESSAGE = 'syncline_documents: collection and id cannot change; insert the new document and delete the old one';
    END IF;
    NEW.deleted := coalesce(NEW.deleted, false);
    NEW.owner := coalesce(NEW.owner, '');
    -- Stamped by the writer itself: this transaction's position and a revision of its own.
    IF NOT (NEW.change_xid IS NOT DISTINCT FROM tx AND NEW.change_seq IS NOT NULL
            AND coalesce(NEW.revision, '') <> '' AND NEW.updated_at IS NOT NULL
            AND (TG_OP = 'INSERT' OR NEW.revision IS DISTINCT FROM OLD.revision)) THEN
        NEW.revision := syncline_next_revision(
            CASE WHEN TG_OP = 'UPDATE' THEN OLD.revision END, NEW.body, NEW.deleted);
        NEW.updated_at := now();
        NEW.change_xid := tx;
        NEW.change_seq := nextval('syncline_change_seq');
    END IF;
    -- Identical notifications of one transaction are sent once.
    PERFORM pg_notify('syncline_changes', tx::text || ':' || NEW.collection);
    RETURN NEW;
END
$$;

CREATE TRIGGER syncline_stamp
    BEFORE INSERT OR UPDATE ON syncline_documents
    FOR EACH ROW
    WHEN (current_setting('syncline.writer', true) IS DISTINCT FROM 'push')
    EXECUTE FUNCTION syncline_stamp();

-- A hard DELETE would vanish without a trace for every replica: it becomes a tombstone (an
-- UPDATE, stamped and notified by syncline_stamp). Only a retention purge, which sets
-- `syncline.purge = on` in its transaction, really deletes rows.
CREATE FUNCTION syncline_tombstone() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NOT OLD.deleted THEN
        UPDATE syncline_documents SET deleted = true
        WHERE collection = OLD.collection AND id = OLD.id;
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER syncline_tombstone
    BEFORE DELETE ON syncline_documents
    FOR EACH ROW
    WHEN (current_setting('syncline.writer', true) IS DISTINCT FROM 'push'
          AND current_setting('syncline.purge', true) IS DISTINCT FROM 'on')
    EXECUTE FUNCTION syncline_tombstone();

-- TRUNCATE fires no row triggers: refuse it outside a purge.
CREATE FUNCTION syncline_refuse_truncate() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION USING ERRCODE = 'SY003',
        MESSAGE = 'syncline_documents: TRUNCATE would not replicate; DELETE rows (they become tombstones) or set syncline.purge = on';
END
$$;

CREATE TRIGGER syncline_refuse_truncate
    BEFORE TRUNCATE ON syncline_documents
    FOR EACH STATEMENT
    WHEN (current_setting('syncline.purge', true) IS DISTINCT FROM 'on')
    EXECUTE FUNCTION syncline_refuse_truncate();

-- The documented way to write one document from SQL: creates it (owned by p_owner) or replaces
-- its body (a tombstone comes back to life; the owner stays), stamped and notified by the
-- triggers above. Returns the new revision.
CREATE FUNCTION syncline_put(p_collection text, p_id text, p_body jsonb, p_owner text DEFAULT '')
RETURNS text LANGUAGE sql AS $$
    INSERT INTO syncline_documents AS d (collection, id, owner, body, deleted)
    VALUES (p_collection, p_id, coalesce(p_owner, ''), p_body, false)
    ON CONFLICT (collection, id) DO UPDATE SET body = excluded.body, deleted = false
    RETURNING d.revision
$$;
