-- Capture options per table (operations, columns, include_old, filter,
-- topic), a chunked backfill for tables too big to snapshot in setup()'s
-- one transaction, and teardown() to stop tracking a table.

-- +goose Up

-- The registry shows each table's options as setup() normalised them; a
-- table set up before this version has the defaults, which are what its
-- trigger does.
ALTER TABLE pg2kafka.tracked_tables
    ADD COLUMN operations  text[]  NOT NULL DEFAULT '{INSERT,UPDATE,DELETE}',
    ADD COLUMN columns     text[],
    ADD COLUMN include_old boolean NOT NULL DEFAULT false,
    ADD COLUMN filter      text,
    ADD COLUMN topic       text;

COMMENT ON COLUMN pg2kafka.tracked_tables.operations IS
    'The statements captured, in the order INSERT, UPDATE, DELETE.';
COMMENT ON COLUMN pg2kafka.tracked_tables.columns IS
    'The columns that go into data and old, in table order; null for all.';
COMMENT ON COLUMN pg2kafka.tracked_tables.include_old IS
    'Whether UPDATE and DELETE events carry "old", the previous values.';
COMMENT ON COLUMN pg2kafka.tracked_tables.filter IS
    'The trigger''s WHEN condition on NEW/OLD; null for none.';
COMMENT ON COLUMN pg2kafka.tracked_tables.topic IS
    'The topic of the table''s events; null for pg2kafka.<db>.<table>.';

-- Both null unless the table's options ask for them, so an event of a table
-- without options is the row it was before this version. topic is written
-- with the event: changing a table's topic does not move events already
-- queued.
ALTER TABLE pg2kafka.outbound_event_queue
    ADD COLUMN topic text,
    ADD COLUMN old   jsonb;

COMMENT ON COLUMN pg2kafka.outbound_event_queue.topic IS
    'The topic setup(topic => …) chose for the event; null for the default.';
COMMENT ON COLUMN pg2kafka.outbound_event_queue.old IS
    'With include_old: the previous values of an UPDATE''s changed columns, or the row a DELETE removed.';

-- A dead-lettered event keeps them too, and gets them back when requeued.
ALTER TABLE pg2kafka.dead_letter_events
    ADD COLUMN topic text,
    ADD COLUMN old   jsonb;

-- +goose StatementBegin
CREATE OR REPLACE FUNCTION pg2kafka.requeue_dead_letters(event_ids bigint[] DEFAULT NULL) RETURNS bigint
LANGUAGE sql SET search_path = pg_catalog, pg_temp AS $$
    WITH taken AS (
        DELETE FROM pg2kafka.dead_letter_events
        WHERE event_ids IS NULL OR id = ANY (event_ids)
        RETURNING id, uuid, external_id, table_schema, table_name, statement, data, created_at, topic, old
    ), requeued AS (
        INSERT INTO pg2kafka.outbound_event_queue (uuid, external_id, table_schema, table_name, statement, data, created_at, topic, old)
        SELECT uuid, external_id, table_schema, table_name, statement, data, created_at, topic, old
        FROM taken
        ORDER BY id
        RETURNING 1
    )
    SELECT count(*) FROM requeued
$$;
-- +goose StatementEnd

-- The row trigger, as in version 1, plus the options setup() passes as three
-- more arguments when a table has any: the topic ('' for the default),
-- include_old, and the columns to keep (an array literal, '' for all). A
-- table without options keeps its three arguments and the events it had.
-- The options are trigger arguments, not registry lookups, so the writer's
-- path costs no more than before. Operations and filter are the trigger's
-- own events and WHEN clause: Postgres skips the function altogether for a
-- row they leave out.
-- +goose StatementBegin
CREATE OR REPLACE FUNCTION pg2kafka.enqueue_event() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    new_row  jsonb;
    old_row  jsonb;
    changed  jsonb;
    previous jsonb;
    to_topic text;
    with_old boolean := false;
    kept     text[];
BEGIN
    IF TG_NARGS > 3 THEN
        to_topic := nullif(TG_ARGV[3], '');
        with_old := TG_ARGV[4]::boolean;
        kept := nullif(TG_ARGV[5], '')::text[];
    END IF;
    IF TG_OP = 'INSERT' THEN
        new_row := to_jsonb(NEW);
        INSERT INTO pg2kafka.outbound_event_queue (external_id, table_schema, table_name, statement, data, topic)
        VALUES (new_row ->> TG_ARGV[0], TG_ARGV[1], TG_ARGV[2], 'INSERT',
                CASE WHEN kept IS NULL THEN new_row
                     ELSE (SELECT coalesce(jsonb_object_agg(c.key, c.value), '{}') FROM jsonb_each(new_row) AS c WHERE c.key = ANY (kept))
                END,
                to_topic);
    ELSIF TG_OP = 'UPDATE' THEN
        new_row := to_jsonb(NEW);
        old_row := to_jsonb(OLD);
        SELECT jsonb_object_agg(n.key, n.value),
               jsonb_object_agg(n.key, old_row -> n.key) FILTER (WHERE with_old)
        INTO changed, previous
        FROM jsonb_each(new_row) AS n
        WHERE n.value IS DISTINCT FROM old_row -> n.key
          AND (kept IS NULL OR n.key = ANY (kept));
        -- An UPDATE that changed nothing (that is kept) is not a change.
        IF changed IS NULL THEN
            RETURN NULL;
        END IF;
        INSERT INTO pg2kafka.outbound_event_queue (external_id, table_schema, table_name, statement, data, topic, old)
        VALUES (new_row ->> TG_ARGV[0], TG_ARGV[1], TG_ARGV[2], 'UPDATE', changed, to_topic, previous);
    ELSE
        old_row := to_jsonb(OLD);
        INSERT INTO pg2kafka.outbound_event_queue (external_id, table_schema, table_name, statement, data, topic, old)
        VALUES (old_row ->> TG_ARGV[0], TG_ARGV[1], TG_ARGV[2], 'DELETE', '{}', to_topic,
                CASE WHEN NOT with_old THEN NULL
                     WHEN kept IS NULL THEN old_row
                     ELSE (SELECT coalesce(jsonb_object_agg(c.key, c.value), '{}') FROM jsonb_each(old_row) AS c WHERE c.key = ANY (kept))
                END);
    END IF;
    RETURN NULL;
END
$$;
-- +goose StatementEnd

-- The progress of each table's backfill, committed with each chunk's
-- events, so that a backfill interrupted anywhere resumes after its last
-- committed chunk. A table's row goes when it stops being tracked.
CREATE TABLE pg2kafka.backfills (
    relation    regclass    PRIMARY KEY REFERENCES pg2kafka.tracked_tables ON DELETE CASCADE,
    key_columns text[]      NOT NULL,
    last_key    jsonb,
    rows_done   bigint      NOT NULL DEFAULT 0,
    rows_total  bigint      NOT NULL,
    events      bigint      NOT NULL DEFAULT 0,
    chunk_size  integer     NOT NULL,
    started_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz
);

COMMENT ON TABLE pg2kafka.backfills IS
    'Backfills by pg2kafka.backfill(): rows_done of rows_total (counted at the start) walked in primary-key order, up to last_key.';

-- enqueue_snapshot enqueues a SNAPSHOT event for rows of a tracked table, as
-- its registry entry says: the external ID, the columns kept, the filter
-- (with NEW and OLD both the row), the topic. Without key_columns it takes
-- every row, for setup(), whose trigger lock already holds the table's
-- writers. With them (the primary key, for a backfill) it takes the rows
-- whose key is after `after` and up to `through`, either null for no bound,
-- and locks each FOR SHARE before its event is written: a concurrent UPDATE
-- or DELETE of the row then either committed first, and the snapshot holds
-- its result, or waits for the chunk to commit, and its event comes after
-- the snapshot. Either way a row's last event is its final state. It
-- returns the number of events enqueued.
-- +goose StatementBegin
CREATE FUNCTION pg2kafka.enqueue_snapshot(
    tracked     pg2kafka.tracked_tables,
    key_columns text[] DEFAULT NULL,
    after       jsonb  DEFAULT NULL,
    through     jsonb  DEFAULT NULL)
RETURNS bigint
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    key_list    text;
    after_row   text;
    through_row text;
    conditions  text[] := '{}';
    enqueued    bigint;
BEGIN
    IF key_columns IS NOT NULL THEN
        SELECT string_agg(format('new.%I', a.attname), ', ' ORDER BY k.ord),
               string_agg(format('($6 ->> %s)::%s', k.ord - 1, format_type(a.atttypid, a.atttypmod)), ', ' ORDER BY k.ord),
               string_agg(format('($7 ->> %s)::%s', k.ord - 1, format_type(a.atttypid, a.atttypmod)), ', ' ORDER BY k.ord)
        INTO key_list, after_row, through_row
        FROM unnest(key_columns) WITH ORDINALITY AS k(name, ord)
        JOIN pg_attribute a ON a.attrelid = tracked.relation AND a.attname = k.name AND a.attnum > 0 AND NOT a.attisdropped;
        IF after IS NOT NULL THEN
            conditions := conditions || format('(%s) > (%s)', key_list, after_row);
        END IF;
        IF through IS NOT NULL THEN
            conditions := conditions || format('(%s) <= (%s)', key_list, through_row);
        END IF;
    END IF;
    IF tracked.filter IS NOT NULL THEN
        -- The newline ends a -- comment the filter may end with.
        conditions := conditions || format(E'(%s\n)', tracked.filter);
    END IF;
    EXECUTE format($sql$
        INSERT INTO pg2kafka.outbound_event_queue (external_id, table_schema, table_name, statement, data, topic)
        SELECT r ->> $1, $2, $3, 'SNAPSHOT',
               CASE WHEN $4::text[] IS NULL THEN r
                    ELSE (SELECT coalesce(jsonb_object_agg(c.key, c.value), '{}') FROM jsonb_each(r) AS c WHERE c.key = ANY ($4))
               END,
               $5
        FROM (SELECT to_jsonb(new) AS r FROM %s AS new%s%s%s) AS s$sql$,
        tracked.relation,
        CASE WHEN tracked.filter IS NULL THEN '' ELSE ', LATERAL (SELECT new.*) AS old' END,
        CASE WHEN cardinality(conditions) = 0 THEN '' ELSE ' WHERE ' || array_to_string(conditions, ' AND ') END,
        CASE WHEN key_columns IS NULL THEN '' ELSE format(' ORDER BY %s FOR SHARE OF new', key_list) END)
    USING tracked.external_id_column, tracked.table_schema, tracked.table_name, tracked.columns, tracked.topic, after, through;
    GET DIAGNOSTICS enqueued = ROW_COUNT;
    RETURN enqueued;
END
$$;
-- +goose StatementEnd

-- setup() starts tracking a table, or changes how it is tracked. Without
-- options it is version 1's setup(), event for event. Every option is
-- checked before anything is written, and the whole call is one statement:
-- a call that fails leaves nothing behind.
--
-- The filter becomes the trigger's WHEN clause, so Postgres' rules for WHEN
-- apply: it may use NEW only if DELETE is not captured, OLD only if INSERT
-- is not, and no subqueries. It is SQL, spliced into CREATE TRIGGER: it is
-- first opened as a cursor over SELECT (filter), which Postgres refuses
-- unless the text is exactly one query, so it cannot smuggle in a statement
-- of its own. setup() runs with its caller's rights.
--
-- Version 1's setup(regclass, text) goes: two-argument calls would find it
-- and this one equally good.
DROP FUNCTION pg2kafka.setup(regclass, text);
-- +goose StatementBegin
CREATE FUNCTION pg2kafka.setup(
    table_name       regclass,
    external_id_name text,
    operations       text[]  DEFAULT '{INSERT,UPDATE,DELETE}',
    columns          text[]  DEFAULT NULL,
    include_old      boolean DEFAULT false,
    filter           text    DEFAULT NULL,
    topic            text    DEFAULT NULL,
    snapshot         boolean DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_variable
DECLARE
    rel_schema  text;
    rel_name    text;
    rel_kind    "char";
    ops         text[];
    cols        text[];
    with_old    boolean := coalesce(include_old, false);
    bad         text;
    check_query refcursor;
    tracked     pg2kafka.tracked_tables;
    first_time  boolean;
    trigger_sql text;
BEGIN
    IF table_name IS NULL OR external_id_name IS NULL THEN
        RAISE EXCEPTION 'pg2kafka.setup: table_name and external_id_name must not be null'
            USING ERRCODE = 'null_value_not_allowed';
    END IF;

    SELECT n.nspname, c.relname, c.relkind INTO rel_schema, rel_name, rel_kind
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE c.oid = table_name;

    IF rel_kind NOT IN ('r', 'p') THEN
        RAISE EXCEPTION 'pg2kafka.setup: % is not a table', table_name
            USING ERRCODE = 'wrong_object_type',
                  HINT = 'Only ordinary and partitioned tables can be tracked.';
    END IF;

    IF NOT EXISTS (
        SELECT FROM pg_attribute
        WHERE attrelid = table_name AND attname = external_id_name AND attnum > 0 AND NOT attisdropped
    ) THEN
        RAISE EXCEPTION 'pg2kafka.setup: table % has no column %', table_name, quote_ident(external_id_name)
            USING ERRCODE = 'undefined_column',
                  HINT = 'external_id_name must name a column of the table, spelled exactly (names are case-sensitive).';
    END IF;

    -- operations, in a fixed order, so that equal sets compare equal.
    SELECT o INTO bad FROM unnest(coalesce(operations, '{INSERT,UPDATE,DELETE}')) AS o
    WHERE o IS NULL OR upper(o) NOT IN ('INSERT', 'UPDATE', 'DELETE')
    LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'pg2kafka.setup: operations: unknown operation %', coalesce(quote_literal(bad), 'NULL')
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'operations lists some of INSERT, UPDATE and DELETE, e.g. ''{INSERT,UPDATE}''.';
    END IF;
    SELECT array_agg(v.op ORDER BY v.ord) INTO ops
    FROM (VALUES ('INSERT', 1), ('UPDATE', 2), ('DELETE', 3)) AS v(op, ord)
    WHERE v.op = ANY (SELECT upper(o) FROM unnest(coalesce(operations, '{INSERT,UPDATE,DELETE}')) AS o);
    IF ops IS NULL THEN
        RAISE EXCEPTION 'pg2kafka.setup: operations is empty'
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'operations lists some of INSERT, UPDATE and DELETE, e.g. ''{INSERT,UPDATE}''; to stop tracking the table, call pg2kafka.teardown().';
    END IF;

    -- columns, in the table's order.
    IF columns IS NOT NULL THEN
        SELECT c INTO bad FROM unnest(columns) AS c
        WHERE c IS NULL OR NOT EXISTS (
            SELECT FROM pg_attribute
            WHERE attrelid = table_name AND attname = c AND attnum > 0 AND NOT attisdropped)
        LIMIT 1;
        IF FOUND THEN
            RAISE EXCEPTION 'pg2kafka.setup: columns: table % has no column %', table_name, coalesce(quote_ident(bad), 'NULL')
                USING ERRCODE = 'undefined_column',
                      HINT = 'columns must name columns of the table, spelled exactly (names are case-sensitive).';
        END IF;
        SELECT array_agg(attname::text ORDER BY attnum) INTO cols
        FROM pg_attribute
        WHERE attrelid = table_name AND attname = ANY (columns) AND attnum > 0 AND NOT attisdropped;
        IF cols IS NULL THEN
            RAISE EXCEPTION 'pg2kafka.setup: columns is empty'
                USING ERRCODE = 'invalid_parameter_value',
                      HINT = 'columns names the columns that go into data; leave it out (or pass NULL) for all of them.';
        END IF;
    END IF;

    -- The rules Kafka (and the shipper's default names) follow.
    IF topic IS NOT NULL AND (topic !~ '^[a-zA-Z0-9._-]+$' OR length(topic) > 249 OR topic IN ('.', '..')) THEN
        RAISE EXCEPTION 'pg2kafka.setup: topic % is not a valid Kafka topic name', quote_literal(topic)
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'A topic name is 1 to 249 of the characters a-z, A-Z, 0-9, ".", "_" and "-", and is not "." or "..".';
    END IF;

    IF filter IS NOT NULL THEN
        IF btrim(filter) = '' THEN
            RAISE EXCEPTION 'pg2kafka.setup: filter is empty'
                USING ERRCODE = 'invalid_parameter_value',
                      HINT = 'filter is a boolean condition on NEW and OLD, e.g. NEW.status <> ''draft''; leave it out (or pass NULL) for none.';
        END IF;
        BEGIN
            -- Opening a cursor parses and plans the query without running
            -- it, and fails unless it is exactly one query.
            OPEN check_query FOR EXECUTE format(E'SELECT (%s\n) FROM %s AS new, LATERAL (SELECT new.*) AS old WHERE false', filter, table_name);
            CLOSE check_query;
        EXCEPTION WHEN OTHERS THEN
            RAISE EXCEPTION 'pg2kafka.setup: filter does not compile: %',
                    CASE WHEN SQLSTATE = '42P11' THEN 'it must be one SQL expression' ELSE SQLERRM END
                USING ERRCODE = SQLSTATE,
                      HINT = 'filter is a boolean condition on NEW and OLD, as in a trigger''s WHEN clause, e.g. NEW.status <> ''draft''.';
        END;
    END IF;

    -- The registry's primary key serialises concurrent setup() calls for one
    -- table: the second waits for the first to commit, then sees the row.
    INSERT INTO pg2kafka.tracked_tables AS t
        (relation, table_schema, table_name, external_id_column, operations, columns, include_old, filter, topic)
    VALUES (table_name, rel_schema, rel_name, external_id_name, ops, cols, with_old, filter, topic)
    ON CONFLICT (relation) DO NOTHING
    RETURNING * INTO tracked;
    first_time := FOUND;
    IF NOT first_time THEN
        SELECT * INTO tracked FROM pg2kafka.tracked_tables AS t WHERE t.relation = table_name FOR UPDATE;
        IF (tracked.external_id_column, tracked.operations, tracked.columns, tracked.include_old, tracked.filter, tracked.topic)
           IS NOT DISTINCT FROM (external_id_name, ops, cols, with_old, filter, topic) THEN
            IF snapshot THEN
                PERFORM pg2kafka.enqueue_snapshot(tracked);
                RETURN;
            END IF;
            RAISE NOTICE 'pg2kafka.setup: % is already tracked; nothing to do', table_name;
            RETURN;
        END IF;
        UPDATE pg2kafka.tracked_tables AS t
        SET external_id_column = external_id_name, operations = ops, columns = cols,
            include_old = with_old, filter = filter, topic = topic
        WHERE t.relation = table_name
        RETURNING * INTO tracked;
        RAISE NOTICE 'pg2kafka.setup: % is already tracked; its options are changed', table_name;
    END IF;

    -- One trigger whatever the options, replaced in place when they change.
    -- CREATE OR REPLACE TRIGGER (Postgres 14) takes the same SHARE ROW
    -- EXCLUSIVE lock as CREATE TRIGGER; DROP TRIGGER, before it, takes an
    -- ACCESS EXCLUSIVE lock, which holds readers too until commit, so it is
    -- used only to change options.
    IF current_setting('server_version_num')::integer >= 140000 THEN
        trigger_sql := 'CREATE OR REPLACE TRIGGER';
    ELSE
        IF NOT first_time THEN
            EXECUTE format('DROP TRIGGER IF EXISTS pg2kafka_enqueue_event ON %s', table_name);
        END IF;
        trigger_sql := 'CREATE TRIGGER';
    END IF;
    trigger_sql := format('%s pg2kafka_enqueue_event AFTER %s ON %s FOR EACH ROW ', trigger_sql, array_to_string(ops, ' OR '), table_name);
    IF filter IS NOT NULL THEN
        trigger_sql := trigger_sql || format(E'WHEN (%s\n) ', filter);
    END IF;
    trigger_sql := trigger_sql || format('EXECUTE FUNCTION pg2kafka.enqueue_event(%L, %L, %L', external_id_name, tracked.table_schema, tracked.table_name);
    IF cols IS NOT NULL OR with_old OR topic IS NOT NULL THEN
        trigger_sql := trigger_sql || format(', %L, %L, %L', coalesce(topic, ''), with_old, coalesce(cols::text, ''));
    END IF;
    trigger_sql := trigger_sql || ')';
    BEGIN
        EXECUTE trigger_sql;
    EXCEPTION WHEN OTHERS THEN
        IF filter IS NULL THEN
            RAISE;
        END IF;
        -- The filter compiled as a query; what fails here is WHEN's own rules.
        RAISE EXCEPTION 'pg2kafka.setup: filter does not compile: %', SQLERRM
            USING ERRCODE = SQLSTATE,
                  HINT = CASE WHEN SQLSTATE = '42P17'
                      THEN 'On INSERT there is no OLD row and on DELETE no NEW row: a filter on NEW needs operations => ''{INSERT,UPDATE}'', one on OLD operations => ''{UPDATE,DELETE}''.'
                      ELSE 'filter is a boolean condition on NEW and OLD, as in a trigger''s WHEN clause, e.g. NEW.status <> ''draft''.'
                  END;
    END;

    IF coalesce(snapshot, first_time) THEN
        PERFORM pg2kafka.enqueue_snapshot(tracked);
    END IF;
END
$$;
-- +goose StatementEnd

-- teardown() stops tracking a table: its trigger and registry entry go (and
-- its backfill, if any). Its queued events still ship, unless purge.
-- +goose StatementBegin
CREATE FUNCTION pg2kafka.teardown(table_name regclass, purge boolean DEFAULT false) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_variable
DECLARE
    tracked pg2kafka.tracked_tables;
    trigger_name name;
BEGIN
    IF table_name IS NULL THEN
        RAISE EXCEPTION 'pg2kafka.teardown: table_name must not be null'
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
    DELETE FROM pg2kafka.tracked_tables AS t WHERE t.relation = table_name RETURNING * INTO tracked;
    IF NOT FOUND THEN
        RAISE NOTICE 'pg2kafka.teardown: % is not tracked; nothing to do', table_name;
        RETURN;
    END IF;
    FOR trigger_name IN
        SELECT tgname FROM pg_trigger
        WHERE tgrelid = table_name AND tgfoid = 'pg2kafka.enqueue_event()'::regprocedure
    LOOP
        EXECUTE format('DROP TRIGGER %I ON %s', trigger_name, table_name);
    END LOOP;
    IF purge THEN
        DELETE FROM pg2kafka.outbound_event_queue AS q
        WHERE q.table_schema = tracked.table_schema AND q.table_name = tracked.table_name;
    END IF;
END
$$;
-- +goose StatementEnd

-- backfill_chunk() is one chunk of backfill(): it starts a backfill of the
-- table unless one is under way, enqueues SNAPSHOT events for the next
-- chunk_size rows in primary-key order, records how far it got, and reports
-- whether the table is done. Its caller commits.
-- +goose StatementBegin
CREATE FUNCTION pg2kafka.backfill_chunk(table_name regclass, chunk_size integer) RETURNS boolean
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_variable
DECLARE
    tracked   pg2kafka.tracked_tables;
    progress  pg2kafka.backfills;
    key_cols  text[];
    total     bigint;
    key_list  text;
    after_row text;
    from_sql  text;
    through   jsonb;
    walked    bigint;
    enqueued  bigint;
BEGIN
    -- FOR SHARE: setup() cannot change the table's options under a chunk.
    SELECT * INTO tracked FROM pg2kafka.tracked_tables AS t WHERE t.relation = table_name FOR SHARE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'pg2kafka.backfill: % is not tracked', table_name
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'Call pg2kafka.setup(table, external_id_column, snapshot => false) first: its trigger captures the changes made while the backfill runs.';
    END IF;

    SELECT * INTO progress FROM pg2kafka.backfills AS b WHERE b.relation = table_name FOR UPDATE;
    IF NOT FOUND OR progress.finished_at IS NOT NULL THEN
        SELECT array_agg(a.attname::text ORDER BY k.ord) INTO key_cols
        FROM pg_index i
        CROSS JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord)
        JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
        WHERE i.indrelid = table_name AND i.indisprimary AND k.ord <= i.indnkeyatts;
        IF key_cols IS NULL THEN
            RAISE EXCEPTION 'pg2kafka.backfill: % has no primary key', table_name
                USING ERRCODE = 'object_not_in_prerequisite_state',
                      HINT = 'A backfill walks the table in primary-key order. Without one, snapshot it in one transaction: pg2kafka.setup(…, snapshot => true).';
        END IF;
        EXECUTE format('SELECT count(*) FROM %s', table_name) INTO total;
        INSERT INTO pg2kafka.backfills AS b (relation, key_columns, rows_total, chunk_size)
        VALUES (table_name, key_cols, total, chunk_size)
        ON CONFLICT (relation) DO UPDATE
        SET key_columns = excluded.key_columns, last_key = NULL, rows_done = 0, rows_total = excluded.rows_total,
            events = 0, chunk_size = excluded.chunk_size, started_at = now(), updated_at = now(), finished_at = NULL
        RETURNING * INTO progress;
    END IF;

    SELECT string_agg(format('new.%I', a.attname), ', ' ORDER BY k.ord),
           string_agg(format('($1 ->> %s)::%s', k.ord - 1, format_type(a.atttypid, a.atttypmod)), ', ' ORDER BY k.ord)
    INTO key_list, after_row
    FROM unnest(progress.key_columns) WITH ORDINALITY AS k(name, ord)
    JOIN pg_attribute a ON a.attrelid = table_name AND a.attname = k.name AND a.attnum > 0 AND NOT a.attisdropped;
    from_sql := format('%s AS new', table_name);
    IF progress.last_key IS NOT NULL THEN
        from_sql := from_sql || format(' WHERE (%s) > (%s)', key_list, after_row);
    END IF;

    -- The chunk ends at the key of its chunk_size-th row, in a first, plain
    -- read; the rows up to it are then locked and snapshotted. Bounding the
    -- chunk by key, not by a LIMIT on the locking read, matters: a row
    -- updated meanwhile is locked in its new version, whose key may have
    -- moved, and the next chunk must start where this one's range ended.
    EXECUTE format('SELECT jsonb_build_array(%s) FROM %s ORDER BY %s OFFSET $2 - 1 LIMIT 1', key_list, from_sql, key_list)
    INTO through USING progress.last_key, chunk_size;
    IF through IS NULL THEN
        EXECUTE format('SELECT count(*) FROM %s', from_sql) INTO walked USING progress.last_key;
    ELSE
        walked := chunk_size;
    END IF;

    enqueued := pg2kafka.enqueue_snapshot(tracked, progress.key_columns, progress.last_key, through);

    UPDATE pg2kafka.backfills AS b
    SET last_key = coalesce(through, b.last_key), rows_done = b.rows_done + walked, events = b.events + enqueued,
        chunk_size = chunk_size, updated_at = now(), finished_at = CASE WHEN through IS NULL THEN now() END
    WHERE b.relation = table_name;
    RETURN through IS NULL;
END
$$;
-- +goose StatementEnd

-- backfill() enqueues a SNAPSHOT event for every row of a tracked table in
-- chunks of chunk_size rows in primary-key order, one transaction each, so
-- that a table of any size is snapshotted without a long lock or a long
-- transaction. Progress is in pg2kafka.backfills; called again after an
-- interruption, it resumes after the last committed chunk, and called again
-- after it finished, it starts over. CALL it outside a transaction block:
-- it commits as it goes. (A procedure that commits cannot pin its
-- search_path; everything it names is schema-qualified, and the chunks run
-- in backfill_chunk(), which pins it.)
-- +goose StatementBegin
CREATE PROCEDURE pg2kafka.backfill(table_name regclass, chunk_size integer DEFAULT 10000)
LANGUAGE plpgsql AS $$
DECLARE
    done      boolean := false;
    deadlocks integer := 0;
BEGIN
    IF table_name IS NULL OR chunk_size IS NULL OR chunk_size < 1 THEN
        RAISE EXCEPTION 'pg2kafka.backfill: table_name must not be null and chunk_size must be at least 1'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    WHILE NOT done LOOP
        BEGIN
            done := pg2kafka.backfill_chunk(table_name, chunk_size);
            deadlocks := 0;
        EXCEPTION WHEN deadlock_detected THEN
            -- A writer locking rows of the chunk in another order; the
            -- chunk was rolled back, and is tried again.
            deadlocks := deadlocks + 1;
            IF deadlocks > 10 THEN
                RAISE;
            END IF;
            PERFORM pg_catalog.pg_sleep(0.05 * deadlocks);
        END;
        COMMIT;
    END LOOP;
END
$$;
-- +goose StatementEnd

-- Only the schema's owner calls them (see migration 00002).
REVOKE EXECUTE ON FUNCTION pg2kafka.setup(regclass, text, text[], text[], boolean, text, text, boolean) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION pg2kafka.teardown(regclass, boolean) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION pg2kafka.enqueue_snapshot(pg2kafka.tracked_tables, text[], jsonb, jsonb) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION pg2kafka.backfill_chunk(regclass, integer) FROM PUBLIC;
REVOKE EXECUTE ON PROCEDURE pg2kafka.backfill(regclass, integer) FROM PUBLIC;

-- +goose Down
-- Version 3 has no options. A table set up with any stops being tracked,
-- with a warning: tracking it with every column and operation could ship
-- what its options kept out. So do pg2kafka triggers the registry does not
-- know, which version 1's down migration would not find.
-- +goose StatementBegin
DO $$
DECLARE
    t record;
BEGIN
    FOR t IN
        SELECT tg.tgrelid::regclass AS relation, tg.tgname, r.relation IS NOT NULL AS registered
        FROM pg_trigger tg
        LEFT JOIN pg2kafka.tracked_tables r ON r.relation = tg.tgrelid
        WHERE tg.tgfoid = 'pg2kafka.enqueue_event()'::regprocedure
          AND (r.relation IS NULL OR r.operations <> '{INSERT,UPDATE,DELETE}' OR r.columns IS NOT NULL
               OR r.include_old OR r.filter IS NOT NULL OR r.topic IS NOT NULL)
    LOOP
        EXECUTE format('DROP TRIGGER %I ON %s', t.tgname, t.relation);
        IF t.registered THEN
            RAISE WARNING 'pg2kafka: % is no longer tracked: its capture options need pg2kafka migration 4', t.relation
                USING HINT = 'Track it again with pg2kafka.setup(), without options or after migrating up again.';
        END IF;
    END LOOP;
    DELETE FROM pg2kafka.tracked_tables r
    WHERE r.operations <> '{INSERT,UPDATE,DELETE}' OR r.columns IS NOT NULL
       OR r.include_old OR r.filter IS NOT NULL OR r.topic IS NOT NULL;
    IF EXISTS (SELECT FROM pg2kafka.outbound_event_queue WHERE topic IS NOT NULL OR old IS NOT NULL)
       OR EXISTS (SELECT FROM pg2kafka.dead_letter_events WHERE topic IS NOT NULL OR old IS NOT NULL) THEN
        RAISE WARNING 'pg2kafka: queued events lose their topic and old values: they will ship to their table''s default topic';
    END IF;
END
$$;
-- +goose StatementEnd
DROP PROCEDURE pg2kafka.backfill(regclass, integer);
DROP FUNCTION pg2kafka.backfill_chunk(regclass, integer);
DROP FUNCTION pg2kafka.teardown(regclass, boolean);
DROP FUNCTION pg2kafka.setup(regclass, text, text[], text[], boolean, text, text, boolean);
DROP FUNCTION pg2kafka.enqueue_snapshot(pg2kafka.tracked_tables, text[], jsonb, jsonb);
DROP TABLE pg2kafka.backfills;

-- setup() and the trigger as version 1 made them.
-- +goose StatementBegin
CREATE FUNCTION pg2kafka.setup(table_name regclass, external_id_name text) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_variable
DECLARE
    rel_schema text;
    rel_name   text;
    rel_kind   "char";
BEGIN
    IF table_name IS NULL OR external_id_name IS NULL THEN
        RAISE EXCEPTION 'pg2kafka.setup: table_name and external_id_name must not be null'
            USING ERRCODE = 'null_value_not_allowed';
    END IF;

    SELECT n.nspname, c.relname, c.relkind INTO rel_schema, rel_name, rel_kind
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE c.oid = table_name;

    IF rel_kind NOT IN ('r', 'p') THEN
        RAISE EXCEPTION 'pg2kafka.setup: % is not a table', table_name
            USING ERRCODE = 'wrong_object_type',
                  HINT = 'Only ordinary and partitioned tables can be tracked.';
    END IF;

    IF NOT EXISTS (
        SELECT FROM pg_attribute
        WHERE attrelid = table_name AND attname = external_id_name AND attnum > 0 AND NOT attisdropped
    ) THEN
        RAISE EXCEPTION 'pg2kafka.setup: table % has no column %', table_name, quote_ident(external_id_name)
            USING ERRCODE = 'undefined_column',
                  HINT = 'external_id_name must name a column of the table, spelled exactly (names are case-sensitive).';
    END IF;

    INSERT INTO pg2kafka.tracked_tables (relation, table_schema, table_name, external_id_column)
    VALUES (table_name, rel_schema, rel_name, external_id_name)
    ON CONFLICT (relation) DO NOTHING;
    IF NOT FOUND THEN
        RAISE NOTICE 'pg2kafka.setup: % is already tracked; nothing to do', table_name;
        RETURN;
    END IF;

    EXECUTE format(
        'CREATE TRIGGER pg2kafka_enqueue_event AFTER INSERT OR UPDATE OR DELETE ON %s '
        'FOR EACH ROW EXECUTE FUNCTION pg2kafka.enqueue_event(%L, %L, %L)',
        table_name, external_id_name, rel_schema, rel_name);

    EXECUTE format(
        'INSERT INTO pg2kafka.outbound_event_queue (external_id, table_schema, table_name, statement, data) '
        'SELECT r ->> $1, $2, $3, ''SNAPSHOT'', r FROM (SELECT to_jsonb(t) AS r FROM %s AS t) AS s',
        table_name)
    USING external_id_name, rel_schema, rel_name;
END
$$;
-- +goose StatementEnd
REVOKE EXECUTE ON FUNCTION pg2kafka.setup(regclass, text) FROM PUBLIC;

-- +goose StatementBegin
CREATE OR REPLACE FUNCTION pg2kafka.enqueue_event() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    new_row jsonb;
    old_row jsonb;
    changed jsonb;
BEGIN
    IF TG_OP = 'INSERT' THEN
        new_row := to_jsonb(NEW);
        INSERT INTO pg2kafka.outbound_event_queue (external_id, table_schema, table_name, statement, data)
        VALUES (new_row ->> TG_ARGV[0], TG_ARGV[1], TG_ARGV[2], 'INSERT', new_row);
    ELSIF TG_OP = 'UPDATE' THEN
        new_row := to_jsonb(NEW);
        old_row := to_jsonb(OLD);
        SELECT jsonb_object_agg(n.key, n.value) INTO changed
        FROM jsonb_each(new_row) AS n
        WHERE n.value IS DISTINCT FROM old_row -> n.key;
        -- An UPDATE that changed nothing is not a change.
        IF changed IS NULL THEN
            RETURN NULL;
        END IF;
        INSERT INTO pg2kafka.outbound_event_queue (external_id, table_schema, table_name, statement, data)
        VALUES (new_row ->> TG_ARGV[0], TG_ARGV[1], TG_ARGV[2], 'UPDATE', changed);
    ELSE
        INSERT INTO pg2kafka.outbound_event_queue (external_id, table_schema, table_name, statement, data)
        VALUES (to_jsonb(OLD) ->> TG_ARGV[0], TG_ARGV[1], TG_ARGV[2], 'DELETE', '{}');
    END IF;
    RETURN NULL;
END
$$;
-- +goose StatementEnd

-- +goose StatementBegin
CREATE OR REPLACE FUNCTION pg2kafka.requeue_dead_letters(event_ids bigint[] DEFAULT NULL) RETURNS bigint
LANGUAGE sql SET search_path = pg_catalog, pg_temp AS $$
    WITH taken AS (
        DELETE FROM pg2kafka.dead_letter_events
        WHERE event_ids IS NULL OR id = ANY (event_ids)
        RETURNING id, uuid, external_id, table_schema, table_name, statement, data, created_at
    ), requeued AS (
        INSERT INTO pg2kafka.outbound_event_queue (uuid, external_id, table_schema, table_name, statement, data, created_at)
        SELECT uuid, external_id, table_schema, table_name, statement, data, created_at
        FROM taken
        ORDER BY id
        RETURNING 1
    )
    SELECT count(*) FROM requeued
$$;
-- +goose StatementEnd

ALTER TABLE pg2kafka.dead_letter_events
    DROP COLUMN topic,
    DROP COLUMN old;
ALTER TABLE pg2kafka.outbound_event_queue
    DROP COLUMN topic,
    DROP COLUMN old;
ALTER TABLE pg2kafka.tracked_tables
    DROP COLUMN operations,
    DROP COLUMN columns,
    DROP COLUMN include_old,
    DROP COLUMN filter,
    DROP COLUMN topic;
