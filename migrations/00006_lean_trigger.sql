-- The writer's path: what the row trigger costs every INSERT, UPDATE and
-- DELETE of a tracked table. Four costs go, each measured per row and by
-- script/bench:
--
-- - SET search_path on enqueue_event(). A function with a SET clause saves
--   and restores the setting on every call and makes Postgres recompute its
--   namespace search path; it was a third of the trigger's cost. The function
--   stays SECURITY DEFINER, and is instead immune to its caller's
--   search_path by naming every type, function and operator it uses with its
--   schema, so that nothing in it is looked up by name.
-- - gen_random_uuid(), the queue's uuid default: strong randomness on every
--   row. An event's uuid is now derived from the installation's id and the
--   event's id and created_at (pg2kafka.event_uuid()), when it is shipped.
--   It is as unique, and as stable across redeliveries, as the stored one.
-- - The CHECK on statement. Postgres rebuilds a constraint's expression for
--   every statement, and a trigger's INSERT is one statement per row. Only
--   pg2kafka's own functions write statement.
-- - A subquery in the trigger's INSERTs, for the columns option: Postgres
--   initialises it for every row whether the row needs it or not.

-- +goose Up

-- One row: the id that makes this installation's event uuids its own. It
-- never changes, so an event's uuid is the same however often it is shipped.
CREATE TABLE pg2kafka.installation (
    only_row     boolean     PRIMARY KEY DEFAULT true CHECK (only_row),
    id           uuid        NOT NULL DEFAULT gen_random_uuid(),
    installed_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO pg2kafka.installation DEFAULT VALUES;

COMMENT ON TABLE pg2kafka.installation IS
    'This installation''s id, the namespace of the uuids of its events (see pg2kafka.event_uuid).';

-- event_uuid is the uuid the shipper gives an event queued with a null uuid:
-- a version 8 (RFC 9562) uuid made of the first 16 bytes of the SHA-256 of
-- the installation id, the event id and created_at in microseconds since the
-- Unix epoch, the last two as big-endian 64-bit integers. created_at is in
-- it so that ids reused after a reset of the queue's sequence still give new
-- uuids. The shipper computes the same in Go; this is the reference, for
-- finding an event by the uuid its consumers saw.
-- +goose StatementBegin
CREATE FUNCTION pg2kafka.event_uuid(id bigint, created_at timestamptz) RETURNS uuid
LANGUAGE sql STABLE STRICT PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $$
    SELECT encode(
               set_byte(set_byte(substring(h FROM 1 FOR 16),
                                 6, (get_byte(h, 6) & 15) | 128),
                        8, (get_byte(h, 8) & 63) | 128),
               'hex')::uuid
    FROM (SELECT sha256(uuid_send(i.id) || int8send(event_uuid.id)
                        || int8send((extract(epoch FROM event_uuid.created_at) * 1000000)::bigint)) AS h
          FROM pg2kafka.installation AS i) AS s
$$;
-- +goose StatementEnd

COMMENT ON FUNCTION pg2kafka.event_uuid(bigint, timestamptz) IS
    'The uuid of the event with this id and created_at, for an event queued without one.';

REVOKE EXECUTE ON FUNCTION pg2kafka.event_uuid(bigint, timestamptz) FROM PUBLIC;

ALTER TABLE pg2kafka.outbound_event_queue
    ALTER COLUMN uuid DROP DEFAULT,
    ALTER COLUMN uuid DROP NOT NULL,
    DROP CONSTRAINT outbound_event_queue_statement_check;

COMMENT ON COLUMN pg2kafka.outbound_event_queue.uuid IS
    'The event''s uuid if it has its own (a requeued dead letter); null for pg2kafka.event_uuid(id, created_at).';

-- The shipper reads the installation id and the schema's version, and
-- moving an event to the dead-letter table fixes its uuid there, where its id
-- is not the queue's.
-- +goose StatementBegin
CREATE OR REPLACE FUNCTION pg2kafka.grant_shipper_privileges() RETURNS boolean
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'pg2kafka_shipper') THEN
        RAISE WARNING 'pg2kafka: role pg2kafka_shipper does not exist, so it was granted nothing'
            USING HINT = 'A superuser or a role with CREATEROLE can run: CREATE ROLE pg2kafka_shipper NOLOGIN; '
                         'then the owner of schema pg2kafka runs: SELECT pg2kafka.grant_shipper_privileges();';
        RETURN false;
    END IF;
    GRANT USAGE ON SCHEMA pg2kafka TO pg2kafka_shipper;
    GRANT SELECT, DELETE, UPDATE (id) ON pg2kafka.outbound_event_queue TO pg2kafka_shipper;
    GRANT INSERT ON pg2kafka.dead_letter_events TO pg2kafka_shipper;
    GRANT SELECT ON pg2kafka.installation TO pg2kafka_shipper;
    GRANT SELECT ON pg2kafka.goose_db_version TO pg2kafka_shipper;
    GRANT EXECUTE ON FUNCTION pg2kafka.event_uuid(bigint, timestamptz) TO pg2kafka_shipper;
    RETURN true;
END
$$;
-- +goose StatementEnd
SELECT pg2kafka.grant_shipper_privileges();

-- The trigger of version 4, event for event. Every name in it is qualified,
-- operators included (OPERATOR(pg_catalog.=)), because a caller may put a
-- schema of their own before pg_catalog in search_path, and the function
-- runs with its owner's rights. IS DISTINCT FROM and NULLIF look "=" up by
-- name, so they are spelled out with the qualified operator instead.
-- +goose StatementBegin
CREATE OR REPLACE FUNCTION pg2kafka.enqueue_event() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER AS $$
DECLARE
    new_row  pg_catalog.jsonb;
    old_row  pg_catalog.jsonb;
    payload  pg_catalog.jsonb;
    changed  pg_catalog.jsonb;
    previous pg_catalog.jsonb;
    to_topic pg_catalog.text;
    with_old pg_catalog.bool := false;
    kept     pg_catalog.text[];
BEGIN
    -- The commonest case first, in the fewest steps: each costs every row.
    IF TG_NARGS OPERATOR(pg_catalog.=) 3 AND TG_OP OPERATOR(pg_catalog.=) 'INSERT' THEN
        new_row := pg_catalog.to_jsonb(NEW);
        INSERT INTO pg2kafka.outbound_event_queue (external_id, table_schema, table_name, statement, data)
        VALUES (new_row OPERATOR(pg_catalog.->>) TG_ARGV[0], TG_ARGV[1], TG_ARGV[2], 'INSERT', new_row);
        RETURN NULL;
    END IF;
    IF TG_NARGS OPERATOR(pg_catalog.>) 3 THEN
        IF TG_ARGV[3] OPERATOR(pg_catalog.<>) '' THEN
            to_topic := TG_ARGV[3];
        END IF;
        with_old := TG_ARGV[4]::pg_catalog.bool;
        IF TG_ARGV[5] OPERATOR(pg_catalog.<>) '' THEN
            kept := TG_ARGV[5]::pg_catalog.text[];
        END IF;
    END IF;
    IF TG_OP OPERATOR(pg_catalog.=) 'INSERT' THEN
        new_row := pg_catalog.to_jsonb(NEW);
        IF kept IS NULL THEN
            payload := new_row;
        ELSE
            SELECT COALESCE(pg_catalog.jsonb_object_agg(c.key, c.value), '{}') INTO payload
            FROM pg_catalog.jsonb_each(new_row) AS c
            WHERE c.key OPERATOR(pg_catalog.=) ANY (kept);
        END IF;
        INSERT INTO pg2kafka.outbound_event_queue (external_id, table_schema, table_name, statement, data, topic)
        VALUES (new_row OPERATOR(pg_catalog.->>) TG_ARGV[0], TG_ARGV[1], TG_ARGV[2], 'INSERT', payload, to_topic);
    ELSIF TG_OP OPERATOR(pg_catalog.=) 'UPDATE' THEN
        new_row := pg_catalog.to_jsonb(NEW);
        old_row := pg_catalog.to_jsonb(OLD);
        -- A value of jsonb_each is never SQL null, so NOT COALESCE(… = …,
        -- false) is IS DISTINCT FROM: true too for a key OLD lacks.
        SELECT pg_catalog.jsonb_object_agg(n.key, n.value),
               pg_catalog.jsonb_object_agg(n.key, old_row OPERATOR(pg_catalog.->) n.key) FILTER (WHERE with_old)
        INTO changed, previous
        FROM pg_catalog.jsonb_each(new_row) AS n
        WHERE NOT COALESCE(n.value OPERATOR(pg_catalog.=) (old_row OPERATOR(pg_catalog.->) n.key), false)
          AND (kept IS NULL OR n.key OPERATOR(pg_catalog.=) ANY (kept));
        -- An UPDATE that changed nothing (that is kept) is not a change.
        IF changed IS NULL THEN
            RETURN NULL;
        END IF;
        INSERT INTO pg2kafka.outbound_event_queue (external_id, table_schema, table_name, statement, data, topic, old)
        VALUES (new_row OPERATOR(pg_catalog.->>) TG_ARGV[0], TG_ARGV[1], TG_ARGV[2], 'UPDATE', changed, to_topic, previous);
    ELSE
        old_row := pg_catalog.to_jsonb(OLD);
        IF NOT with_old THEN
            previous := NULL;
        ELSIF kept IS NULL THEN
            previous := old_row;
        ELSE
            SELECT COALESCE(pg_catalog.jsonb_object_agg(c.key, c.value), '{}') INTO previous
            FROM pg_catalog.jsonb_each(old_row) AS c
            WHERE c.key OPERATOR(pg_catalog.=) ANY (kept);
        END IF;
        INSERT INTO pg2kafka.outbound_event_queue (external_id, table_schema, table_name, statement, data, topic, old)
        VALUES (old_row OPERATOR(pg_catalog.->>) TG_ARGV[0], TG_ARGV[1], TG_ARGV[2], 'DELETE', '{}', to_topic, previous);
    END IF;
    RETURN NULL;
END
$$;
-- +goose StatementEnd

-- Postgres checks EXECUTE on a trigger function when a trigger is created,
-- not when it fires: writers need no privilege on it, and without one nobody
-- but the owner can attach it to a table of their own (a temporary one, say)
-- and write events in the name of any table.
REVOKE EXECUTE ON FUNCTION pg2kafka.enqueue_event() FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION pg2kafka.refuse_truncate() FROM PUBLIC;

-- +goose Down
GRANT EXECUTE ON FUNCTION pg2kafka.enqueue_event() TO PUBLIC;
GRANT EXECUTE ON FUNCTION pg2kafka.refuse_truncate() TO PUBLIC;

-- The trigger as version 4 left it.
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

-- Queued events keep the uuid they would have been shipped with.
UPDATE pg2kafka.outbound_event_queue SET uuid = pg2kafka.event_uuid(id, created_at) WHERE uuid IS NULL;
ALTER TABLE pg2kafka.outbound_event_queue
    ALTER COLUMN uuid SET DEFAULT gen_random_uuid(),
    ALTER COLUMN uuid SET NOT NULL,
    ADD CONSTRAINT outbound_event_queue_statement_check CHECK (statement IN ('INSERT', 'UPDATE', 'DELETE', 'SNAPSHOT'));
COMMENT ON COLUMN pg2kafka.outbound_event_queue.uuid IS NULL;

-- The list of the shipper's privileges as migration 00003 left it.
-- +goose StatementBegin
CREATE OR REPLACE FUNCTION pg2kafka.grant_shipper_privileges() RETURNS boolean
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'pg2kafka_shipper') THEN
        RAISE WARNING 'pg2kafka: role pg2kafka_shipper does not exist, so it was granted nothing'
            USING HINT = 'A superuser or a role with CREATEROLE can run: CREATE ROLE pg2kafka_shipper NOLOGIN; '
                         'then the owner of schema pg2kafka runs: SELECT pg2kafka.grant_shipper_privileges();';
        RETURN false;
    END IF;
    GRANT USAGE ON SCHEMA pg2kafka TO pg2kafka_shipper;
    GRANT SELECT, DELETE, UPDATE (id) ON pg2kafka.outbound_event_queue TO pg2kafka_shipper;
    GRANT INSERT ON pg2kafka.dead_letter_events TO pg2kafka_shipper;
    RETURN true;
END
$$;
-- +goose StatementEnd

-- +goose StatementBegin
DO $$
BEGIN
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'pg2kafka_shipper') THEN
        REVOKE SELECT ON pg2kafka.goose_db_version FROM pg2kafka_shipper;
    END IF;
END
$$;
-- +goose StatementEnd

DROP FUNCTION pg2kafka.event_uuid(bigint, timestamptz);
DROP TABLE pg2kafka.installation;
