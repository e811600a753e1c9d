-- Idempotent pushes: the keys pushes were sent with, per principal, and the response each
-- was answered with, so that a retried push (its acknowledgement lost) gets the first answer
-- instead of being applied twice. A push claims its key first, in its own transaction
-- (INSERT ... ON CONFLICT), so a concurrent duplicate waits on the primary key until the first
-- commits (then replays its response) or rolls back (then claims the key itself); a push
-- that fails stores no key. The collection is part of the request hash, so a key is the
-- principal's, whatever the collection. `key` is the client's bytes (bytea: a key may hold
-- any character, NUL included). `response` is set before the claiming transaction commits.
-- Rows past `expires_at` are answered like absent ones, replaced by the next push with the
-- key, and deleted by the background purge (src/purge.rs).
CREATE TABLE syncline_push_keys (
    principal    text        NOT NULL,
    key          bytea       NOT NULL,
    request_hash bytea       NOT NULL CHECK (length(request_hash) = 32),
    response     bytea,
    created_at   timestamptz NOT NULL,
    expires_at   timestamptz NOT NULL,
    PRIMARY KEY (principal, key)
);

-- The purge deletes expired keys oldest first, in batches.
CREATE INDEX syncline_push_keys_expiry ON syncline_push_keys (expires_at);

-- Versions that lost an automatic conflict resolution (collections with `keep_overwritten`),
-- written in the resolving push's transaction and listed by ListOverwritten for the
-- document's owner, so an app can show a conflict dialog after the fact. `source` is
-- `server` (a stored state the resolution replaced) or `client` (a pushed state not written
-- as sent); `revision` is that state's revision (for `client`, the one the client assumed);
-- `resolved_revision` the revision the resolution left stored. `seq` orders the versions of
-- one push (same `overwritten_at`) in the order the push decided them.
CREATE TABLE syncline_overwritten (
    seq               bigint      GENERATED ALWAYS AS IDENTITY,
    collection        text        NOT NULL,
    id                text        NOT NULL,
    owner             text        NOT NULL,
    body              jsonb       NOT NULL,
    deleted           boolean     NOT NULL,
    revision          text        NOT NULL,
    source            text        NOT NULL,
    strategy          text        NOT NULL,
    resolved_revision text        NOT NULL,
    pushed_by         text        NOT NULL,
    overwritten_at    timestamptz NOT NULL,
    expires_at        timestamptz NOT NULL
);

-- A document's versions, newest first.
CREATE INDEX syncline_overwritten_document
    ON syncline_overwritten (collection, id, overwritten_at DESC, seq DESC);

-- The purge deletes expired versions oldest first, in batches.
CREATE INDEX syncline_overwritten_expiry ON syncline_overwritten (expires_at);
