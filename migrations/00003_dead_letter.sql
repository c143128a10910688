-- Poison events: an event its destination refuses for what it is (larger
-- than the broker accepts, invalid) would block its key forever if it stayed
-- queued. The shipper moves it here instead, in the transaction that takes it
-- off the queue, and requeue_dead_letters() puts it back once the cause is
-- fixed.

-- +goose Up

-- The event's own columns, as the queue held them, then what happened to it.
-- id is the event's id in the queue when it was moved: queue ids are never
-- reused, so it stays unique here, and it is how requeue_dead_letters() names
-- events.
CREATE TABLE pg2kafka.dead_letter_events (
    id               bigint      PRIMARY KEY,
    uuid             uuid        NOT NULL,
    external_id      text,
    table_schema     text        NOT NULL,
    table_name       text        NOT NULL,
    statement        text        NOT NULL CHECK (statement IN ('INSERT', 'UPDATE', 'DELETE', 'SNAPSHOT')),
    data             jsonb       NOT NULL,
    created_at       timestamptz NOT NULL,
    error            text        NOT NULL,
    attempts         integer     NOT NULL CHECK (attempts > 0),
    first_failed_at  timestamptz NOT NULL,
    last_failed_at   timestamptz NOT NULL,
    dead_lettered_at timestamptz NOT NULL DEFAULT now()
);

COMMENT ON TABLE pg2kafka.dead_letter_events IS
    'Events the destination refused for good, with the reason; pg2kafka.requeue_dead_letters() sends them again.';
COMMENT ON COLUMN pg2kafka.dead_letter_events.error IS
    'The destination''s last refusal, which came when the event was sent alone.';
COMMENT ON COLUMN pg2kafka.dead_letter_events.attempts IS
    'How many sends of the event failed before it was moved here.';

-- requeue_dead_letters() moves the given dead-lettered events (all of them
-- when event_ids is null) back to the queue and returns how many it moved.
-- Each gets a new id, at the end of the queue, in the order of their old
-- ids: a requeued event is shipped after the events of its key written
-- since, so its place in its key's order is lost, while requeued events keep
-- their order among themselves. They keep their uuid and created_at.
-- +goose StatementBegin
CREATE FUNCTION pg2kafka.requeue_dead_letters(event_ids bigint[] DEFAULT NULL) RETURNS bigint
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
-- The owner's to call, not the shipper's (see 00002).
REVOKE EXECUTE ON FUNCTION pg2kafka.requeue_dead_letters(bigint[]) FROM PUBLIC;

-- The shipper moves events here, so its role (migration 00002) needs INSERT:
-- added to the one list of its privileges, which is then granted.
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
SELECT pg2kafka.grant_shipper_privileges();

-- +goose Down
-- Rolling back must not lose the events kept here: they go back to the queue.
SELECT pg2kafka.requeue_dead_letters();
DROP FUNCTION pg2kafka.requeue_dead_letters(bigint[]);
DROP TABLE pg2kafka.dead_letter_events;
-- The list of the shipper's privileges as migration 00002 left it.
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
    RETURN true;
END
$$;
-- +goose StatementEnd
