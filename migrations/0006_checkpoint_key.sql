-- The key that seals checkpoint tokens (AES-256-GCM-SIV), shared by every Syncline process on
-- this database so that a token stays valid on any replica and across restarts. One row, filled
-- with random bytes by the first server that needs it (INSERT ... ON CONFLICT DO NOTHING, then
-- SELECT, so concurrent first starts agree). A `checkpoint_key` in the configuration wins over
-- it. Whoever can read this table can forge checkpoints, so grant it like the documents.
-- Running processes keep the key they loaded: replacing or deleting the row takes effect only
-- after every process restarts, and invalidates every token handed out.
CREATE TABLE syncline_checkpoint_key (
    id         smallint    PRIMARY KEY CHECK (id = 1),
    key        bytea       NOT NULL CHECK (length(key) = 32),
    created_at timestamptz NOT NULL DEFAULT now()
);
