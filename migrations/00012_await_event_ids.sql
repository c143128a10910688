-- An idle shipper waits for new events in Postgres rather than asking for
-- them over and over: one session per shipper process calls
-- await_event_ids(), which checks the queue's id sequence every check_ms
-- inside Postgres and returns as soon as an id past after has been handed
-- out, or after timeout_ms. Each check is a read of the sequence's one row
-- and a sleep, with no round trip and no wake-up of the shipper, so the
-- shipper learns of the first event after an idle spell within check_ms at
-- a fraction of what polling that often would cost (docs/performance.md).
-- The writers' path is untouched: nothing here runs in their transactions,
-- and no NOTIFY is sent. The call holds a snapshot for at most timeout_ms,
-- which the shipper keeps to a second.

-- +goose Up
-- +goose StatementBegin
CREATE FUNCTION pg2kafka.await_event_ids(after bigint, timeout_ms integer, check_ms integer) RETURNS bigint
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    deadline timestamptz := clock_timestamp() + make_interval(secs => least(greatest(timeout_ms, 0), 60000) / 1000.0);
    pause double precision := least(greatest(check_ms, 1), 1000) / 1000.0;
    last_id bigint;
BEGIN
    LOOP
        -- A sequence is read outside MVCC: this sees ids handed out after
        -- the call began.
        SELECT CASE WHEN is_called THEN last_value ELSE last_value - 1 END INTO last_id
        FROM pg2kafka.outbound_event_queue_id_seq;
        IF last_id > after OR clock_timestamp() >= deadline THEN
            RETURN last_id;
        END IF;
        PERFORM pg_sleep(pause);
    END LOOP;
END
$$;
-- +goose StatementEnd
REVOKE EXECUTE ON FUNCTION pg2kafka.await_event_ids(bigint, integer, integer) FROM PUBLIC;
COMMENT ON FUNCTION pg2kafka.await_event_ids(bigint, integer, integer) IS
    'Returns the last event id handed out once it is past after, or after timeout_ms, checking every check_ms: how an idle shipper learns of new events.';

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
    GRANT SELECT ON SEQUENCE pg2kafka.outbound_event_queue_id_seq TO pg2kafka_shipper;
    GRANT INSERT ON pg2kafka.dead_letter_events TO pg2kafka_shipper;
    GRANT SELECT ON pg2kafka.installation TO pg2kafka_shipper;
    GRANT SELECT ON pg2kafka.goose_db_version TO pg2kafka_shipper;
    GRANT EXECUTE ON FUNCTION pg2kafka.event_uuid(bigint, timestamptz) TO pg2kafka_shipper;
    GRANT EXECUTE ON FUNCTION pg2kafka.await_event_ids(bigint, integer, integer) TO pg2kafka_shipper;
    GRANT SELECT (table_schema, table_name) ON pg2kafka.tracked_tables TO pg2kafka_shipper;
    GRANT SELECT (table_schema, table_name) ON pg2kafka.dead_letter_events TO pg2kafka_shipper;
    GRANT SELECT ON pg2kafka.tracked_tables TO pg2kafka_shipper;
    RETURN true;
END
$$;
-- +goose StatementEnd
SELECT pg2kafka.grant_shipper_privileges();

-- +goose Down
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
    GRANT SELECT ON SEQUENCE pg2kafka.outbound_event_queue_id_seq TO pg2kafka_shipper;
    GRANT INSERT ON pg2kafka.dead_letter_events TO pg2kafka_shipper;
    GRANT SELECT ON pg2kafka.installation TO pg2kafka_shipper;
    GRANT SELECT ON pg2kafka.goose_db_version TO pg2kafka_shipper;
    GRANT EXECUTE ON FUNCTION pg2kafka.event_uuid(bigint, timestamptz) TO pg2kafka_shipper;
    GRANT SELECT (table_schema, table_name) ON pg2kafka.tracked_tables TO pg2kafka_shipper;
    GRANT SELECT (table_schema, table_name) ON pg2kafka.dead_letter_events TO pg2kafka_shipper;
    GRANT SELECT ON pg2kafka.tracked_tables TO pg2kafka_shipper;
    RETURN true;
END
$$;
-- +goose StatementEnd
DROP FUNCTION pg2kafka.await_event_ids(bigint, integer, integer);
