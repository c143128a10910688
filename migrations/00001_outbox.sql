-- The outbox: a queue of change events filled by row triggers on tracked
-- tables and drained by the shipper, plus setup() to start tracking a table.

-- +goose Up
CREATE SCHEMA IF NOT EXISTS pg2kafka;

-- One row per change, deleted by the shipper once the destination has
-- acknowledged it. bigint identity: ids never wrap, and their order is the
-- order in which events were written, which the shipper preserves per key.
CREATE TABLE pg2kafka.outbound_event_queue (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    uuid         uuid        NOT NULL DEFAULT gen_random_uuid(),
    external_id  text,
    table_schema text        NOT NULL,
    table_name   text        NOT NULL,
    statement    text        NOT NULL CHECK (statement IN ('INSERT', 'UPDATE', 'DELETE', 'SNAPSHOT')),
    data         jsonb       NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now()
);

COMMENT ON TABLE pg2kafka.outbound_event_queue IS
    'Change events waiting to be shipped; a row is deleted once its destination acknowledged it.';

-- The tables setup() tracks. The schema and table names are recorded as they
-- were at setup() time: they name the topic, so renaming a table does not
-- silently move its events to another topic.
CREATE TABLE pg2kafka.tracked_tables (
    relation           regclass    PRIMARY KEY,
    table_schema       text        NOT NULL,
    table_name         text        NOT NULL,
    external_id_column text        NOT NULL,
    tracked_since      timestamptz NOT NULL DEFAULT now()
);

COMMENT ON TABLE pg2kafka.tracked_tables IS
    'Tables whose changes pg2kafka captures, and the column whose value keys their events.';

-- The row trigger of every tracked table. Its arguments are fixed by setup():
-- the external-ID column, then the schema and table name the events carry.
-- Everything is read from one to_jsonb() of the row, with no dynamic SQL, so
-- the cost on the writer's path stays close to that of a bare outbox insert.
-- SECURITY DEFINER lets writers fill the queue without being granted access
-- to it; the pinned search_path keeps that from being hijacked.
-- +goose StatementBegin
CREATE FUNCTION pg2kafka.enqueue_event() RETURNS trigger
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

-- setup() starts tracking a table: it installs the row trigger and enqueues a
-- SNAPSHOT event for every existing row, in the caller's transaction. The
-- trigger is created first: CREATE TRIGGER takes a SHARE ROW EXCLUSIVE lock,
-- which holds concurrent writers (not readers) until the caller commits, so
-- no change can fall between the snapshot and the first captured event.
-- Identifiers reach SQL only through regclass and format('%I'/'%L').
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

    -- The registry's primary key serialises concurrent setup() calls for one
    -- table: the second waits for the first to commit, then sees the row.
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

-- +goose Down
-- +goose StatementBegin
DO $$
DECLARE
    tracked regclass;
BEGIN
    FOR tracked IN
        SELECT t.relation FROM pg2kafka.tracked_tables t
        JOIN pg_class c ON c.oid = t.relation
    LOOP
        EXECUTE format('DROP TRIGGER IF EXISTS pg2kafka_enqueue_event ON %s', tracked);
    END LOOP;
END
$$;
-- +goose StatementEnd
DROP FUNCTION pg2kafka.setup(regclass, text);
DROP FUNCTION pg2kafka.enqueue_event();
DROP TABLE pg2kafka.tracked_tables;
DROP TABLE pg2kafka.outbound_event_queue;
