-- setup() says that it changed a tracked table's options only once it has:
-- a notice reaches the client as it is raised, so one raised before the
-- trigger was replaced claimed a change that a failing filter then rolled
-- back.

-- +goose Up

-- +goose StatementBegin
CREATE OR REPLACE FUNCTION pg2kafka.setup(
    table_name       regclass,
    external_id_name text,
    operations       text[]  DEFAULT '{INSERT,UPDATE,DELETE}',
    columns          text[]  DEFAULT NULL,
    include_old      boolean DEFAULT false,
    filter           text    DEFAULT NULL,
    topic            text    DEFAULT NULL,
    snapshot         boolean DEFAULT NULL,
    full_row         boolean DEFAULT false)
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
    whole       boolean := coalesce(full_row, false);
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
        (relation, table_schema, table_name, external_id_column, operations, columns, include_old, filter, topic, full_row)
    VALUES (table_name, rel_schema, rel_name, external_id_name, ops, cols, with_old, filter, topic, whole)
    ON CONFLICT (relation) DO NOTHING
    RETURNING * INTO tracked;
    first_time := FOUND;
    IF NOT first_time THEN
        SELECT * INTO tracked FROM pg2kafka.tracked_tables AS t WHERE t.relation = table_name FOR UPDATE;
        IF (tracked.external_id_column, tracked.operations, tracked.columns, tracked.include_old, tracked.filter, tracked.topic, tracked.full_row)
           IS NOT DISTINCT FROM (external_id_name, ops, cols, with_old, filter, topic, whole) THEN
            PERFORM pg2kafka.guard(table_name);
            IF snapshot THEN
                PERFORM pg2kafka.enqueue_snapshot(tracked);
                RETURN;
            END IF;
            RAISE NOTICE 'pg2kafka.setup: % is already tracked; nothing to do', table_name;
            RETURN;
        END IF;
        UPDATE pg2kafka.tracked_tables AS t
        SET external_id_column = external_id_name, operations = ops, columns = cols,
            include_old = with_old, filter = filter, topic = topic, full_row = whole
        WHERE t.relation = table_name
        RETURNING * INTO tracked;
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
    IF cols IS NOT NULL OR with_old OR topic IS NOT NULL OR whole THEN
        trigger_sql := trigger_sql || format(', %L, %L, %L', coalesce(topic, ''), with_old, coalesce(cols::text, ''));
    END IF;
    -- A seventh argument only for full_row, so that the triggers of other
    -- tables stay as they were.
    IF whole THEN
        trigger_sql := trigger_sql || ', ''true''';
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

    -- CREATE OR REPLACE TRIGGER sets the trigger back to ENABLE; guard()
    -- makes it fire ALWAYS again.
    PERFORM pg2kafka.guard(table_name);

    IF coalesce(snapshot, first_time) THEN
        PERFORM pg2kafka.enqueue_snapshot(tracked);
    END IF;
    -- Only now: a notice reaches the client at once, even from a statement
    -- that then fails, and must not claim what was rolled back.
    IF NOT first_time THEN
        RAISE NOTICE 'pg2kafka.setup: % is already tracked; its options are changed', table_name;
    END IF;
END
$$;
-- +goose StatementEnd

-- +goose Down

-- +goose StatementBegin
CREATE OR REPLACE FUNCTION pg2kafka.setup(
    table_name       regclass,
    external_id_name text,
    operations       text[]  DEFAULT '{INSERT,UPDATE,DELETE}',
    columns          text[]  DEFAULT NULL,
    include_old      boolean DEFAULT false,
    filter           text    DEFAULT NULL,
    topic            text    DEFAULT NULL,
    snapshot         boolean DEFAULT NULL,
    full_row         boolean DEFAULT false)
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
    whole       boolean := coalesce(full_row, false);
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
        (relation, table_schema, table_name, external_id_column, operations, columns, include_old, filter, topic, full_row)
    VALUES (table_name, rel_schema, rel_name, external_id_name, ops, cols, with_old, filter, topic, whole)
    ON CONFLICT (relation) DO NOTHING
    RETURNING * INTO tracked;
    first_time := FOUND;
    IF NOT first_time THEN
        SELECT * INTO tracked FROM pg2kafka.tracked_tables AS t WHERE t.relation = table_name FOR UPDATE;
        IF (tracked.external_id_column, tracked.operations, tracked.columns, tracked.include_old, tracked.filter, tracked.topic, tracked.full_row)
           IS NOT DISTINCT FROM (external_id_name, ops, cols, with_old, filter, topic, whole) THEN
            PERFORM pg2kafka.guard(table_name);
            IF snapshot THEN
                PERFORM pg2kafka.enqueue_snapshot(tracked);
                RETURN;
            END IF;
            RAISE NOTICE 'pg2kafka.setup: % is already tracked; nothing to do', table_name;
            RETURN;
        END IF;
        UPDATE pg2kafka.tracked_tables AS t
        SET external_id_column = external_id_name, operations = ops, columns = cols,
            include_old = with_old, filter = filter, topic = topic, full_row = whole
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
    IF cols IS NOT NULL OR with_old OR topic IS NOT NULL OR whole THEN
        trigger_sql := trigger_sql || format(', %L, %L, %L', coalesce(topic, ''), with_old, coalesce(cols::text, ''));
    END IF;
    -- A seventh argument only for full_row, so that the triggers of other
    -- tables stay as they were.
    IF whole THEN
        trigger_sql := trigger_sql || ', ''true''';
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

    -- CREATE OR REPLACE TRIGGER sets the trigger back to ENABLE; guard()
    -- makes it fire ALWAYS again.
    PERFORM pg2kafka.guard(table_name);

    IF coalesce(snapshot, first_time) THEN
        PERFORM pg2kafka.enqueue_snapshot(tracked);
    END IF;
END
$$;
-- +goose StatementEnd
