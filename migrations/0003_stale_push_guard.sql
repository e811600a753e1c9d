-- Raised by a push's write statement when a row it planned on changed since it was read (an
-- update's revision no longer matches, or a "new" id now exists). The statement then applies
-- nothing and the server decides the push again, under row locks.
CREATE FUNCTION syncline_stale_push() RETURNS bigint LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION USING ERRCODE = 'SY001', MESSAGE = 'push planned on a stale state';
END
$$;
