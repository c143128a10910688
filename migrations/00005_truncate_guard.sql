-- Two ways a tracked table's changes went missing without a word:
--
-- TRUNCATE fires no row triggers, so the rows it removed left no DELETE
-- events. A statement-level BEFORE TRUNCATE trigger now refuses it.
--
-- Ordinary triggers do not fire when session_replication_role is replica
-- (pg_restore --disable-triggers, logical replication's apply, tools that
-- set it to skip foreign keys), so those writes left no events. pg2kafka's
-- triggers are now ENABLE ALWAYS: they fire whatever the role.
--
-- setup() and teardown() of version 4 keep their work under new names;
-- setup() and teardown() are now thin wrappers that add, or drop, the
-- guard, so version 4's code is not copied here.

-- +goose Up

-- +goose StatementBegin
CREATE FUNCTION pg2kafka.refuse_truncate() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RAISE EXCEPTION 'pg2kafka: TRUNCATE of tracked table %.% is refused: it would remove rows without DELETE events',
            quote_ident(TG_TABLE_SCHEMA), quote_ident(TG_TABLE_NAME)
        USING ERRCODE = 'object_not_in_prerequisite_state',
              HINT = format('Use DELETE FROM %I.%I, which ships a DELETE event per row, or stop tracking the table first with SELECT pg2kafka.teardown(%L).',
                            TG_TABLE_SCHEMA, TG_TABLE_NAME, format('%I.%I', TG_TABLE_SCHEMA, TG_TABLE_NAME));
END
$$;
-- +goose StatementEnd

-- guard() gives a tracked table the TRUNCATE guard and makes both its
-- triggers fire under every session_replication_role. It changes only what
-- is missing, so a setup() that changes nothing takes no further lock.
-- (CREATE OR REPLACE TRIGGER, with which setup() changes options, sets the
-- trigger back to ENABLE: setup() calls guard() after it, every time.)
-- +goose StatementBegin
CREATE FUNCTION pg2kafka.guard(table_name regclass) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_variable
DECLARE
    trigger_name name;
BEGIN
    IF NOT EXISTS (SELECT FROM pg_trigger WHERE tgrelid = table_name AND tgname = 'pg2kafka_refuse_truncate') THEN
        EXECUTE format('CREATE TRIGGER pg2kafka_refuse_truncate BEFORE TRUNCATE ON %s '
                       'FOR EACH STATEMENT EXECUTE FUNCTION pg2kafka.refuse_truncate()', table_name);
    END IF;
    FOR trigger_name IN
        SELECT tgname FROM pg_trigger
        WHERE tgrelid = table_name AND tgenabled <> 'A'
          AND tgfoid IN ('pg2kafka.enqueue_event()'::regprocedure, 'pg2kafka.refuse_truncate()'::regprocedure)
    LOOP
        EXECUTE format('ALTER TABLE %s ENABLE ALWAYS TRIGGER %I', table_name, trigger_name);
    END LOOP;
END
$$;
-- +goose StatementEnd

ALTER FUNCTION pg2kafka.setup(regclass, text, text[], text[], boolean, text, text, boolean) RENAME TO setup_capture;
ALTER FUNCTION pg2kafka.teardown(regclass, boolean) RENAME TO teardown_capture;

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
BEGIN
    PERFORM pg2kafka.setup_capture(table_name, external_id_name, operations, columns, include_old, filter, topic, snapshot);
    PERFORM pg2kafka.guard(table_name);
END
$$;
-- +goose StatementEnd

-- +goose StatementBegin
CREATE FUNCTION pg2kafka.teardown(table_name regclass, purge boolean DEFAULT false) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_variable
BEGIN
    PERFORM pg2kafka.teardown_capture(table_name, purge);
    IF EXISTS (SELECT FROM pg_trigger WHERE tgrelid = table_name AND tgname = 'pg2kafka_refuse_truncate') THEN
        EXECUTE format('DROP TRIGGER pg2kafka_refuse_truncate ON %s', table_name);
    END IF;
END
$$;
-- +goose StatementEnd

-- Only the schema's owner calls them (see migration 00002).
REVOKE EXECUTE ON FUNCTION pg2kafka.setup(regclass, text, text[], text[], boolean, text, text, boolean) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION pg2kafka.teardown(regclass, boolean) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION pg2kafka.guard(regclass) FROM PUBLIC;

-- The tables tracked already (those that still exist).
-- +goose StatementBegin
DO $$
DECLARE
    tracked regclass;
BEGIN
    FOR tracked IN
        SELECT t.relation FROM pg2kafka.tracked_tables t JOIN pg_class c ON c.oid = t.relation
    LOOP
        PERFORM pg2kafka.guard(tracked);
    END LOOP;
END
$$;
-- +goose StatementEnd

-- +goose Down
-- +goose StatementBegin
DO $$
DECLARE
    t record;
BEGIN
    FOR t IN
        SELECT tg.tgrelid::regclass AS relation, tg.tgname, tg.tgfoid = 'pg2kafka.refuse_truncate()'::regprocedure AS guard
        FROM pg_trigger tg
        WHERE tg.tgfoid IN ('pg2kafka.enqueue_event()'::regprocedure, 'pg2kafka.refuse_truncate()'::regprocedure)
          AND NOT tg.tgisinternal AND tg.tgparentid = 0
    LOOP
        IF t.guard THEN
            EXECUTE format('DROP TRIGGER %I ON %s', t.tgname, t.relation);
        ELSE
            EXECUTE format('ALTER TABLE %s ENABLE TRIGGER %I', t.relation, t.tgname);
        END IF;
    END LOOP;
END
$$;
-- +goose StatementEnd
DROP FUNCTION pg2kafka.setup(regclass, text, text[], text[], boolean, text, text, boolean);
DROP FUNCTION pg2kafka.teardown(regclass, boolean);
ALTER FUNCTION pg2kafka.setup_capture(regclass, text, text[], text[], boolean, text, text, boolean) RENAME TO setup;
ALTER FUNCTION pg2kafka.teardown_capture(regclass, boolean) RENAME TO teardown;
DROP FUNCTION pg2kafka.guard(regclass);
DROP FUNCTION pg2kafka.refuse_truncate();
